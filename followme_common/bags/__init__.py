"""
Record, replay and export rosbag2 bags without a rosbag2 install (via `rosbags`).

`storage` reads and writes the files (ROS-free), `playback` times a replay (ROS-free), `record`
and `replay` are the thin ROS nodes, `export` turns camera frames and true masks into the
classic training layout (ROS-free). See docs/bags.md.
"""
