"""Bridge to the Unity quadrotor simulator: protocol (no ROS), socket.io server, ROS node."""
