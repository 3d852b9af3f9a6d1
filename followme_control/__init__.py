"""Follow control: the follow law (follow.py), its ROS node (node.py) and the Unity bridge."""
