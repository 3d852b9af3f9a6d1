"""`--help` for a node's console script, listing its parameters; ROS arguments pass through."""

import argparse

from rclpy.utilities import remove_ros_args


def parse_node_args(argv, prog, description, parameters):
    """
    Parse a node's command line for --help; `parameters` maps name -> (default, descriptor).

    Everything after --ros-args is left for rclpy.
    """
    listing = '\n'.join(f'  {name} (default {default!r}): {descriptor.description}'
                        for name, (default, descriptor) in parameters.items())
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
        epilog='parameters (set with --ros-args -p NAME:=VALUE or a --params-file):\n'
               + listing)
    parser.parse_args(remove_ros_args(argv)[1:])
