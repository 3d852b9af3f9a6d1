"""A node's console script: `--help` listing its parameters, and the init-spin-shutdown main."""

import argparse
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
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


def run_node(prog, make_node, startup_errors, args=None, hint=None) -> int:
    """
    Run one node until Ctrl-C or shutdown; return the exit status.

    A start-up error of the kinds in `startup_errors` (a missing model, a bad parameter) is
    printed on stderr as `prog: error` plus `hint(error)` and gives status 1.
    """
    # Jazzy's rclpy.init() returns None (the context-manager form came later): shut down here.
    rclpy.init(args=args)
    try:
        try:
            node = make_node()
        except startup_errors as error:
            print(f"{prog}: {error}{hint(error) if hint else ''}", file=sys.stderr)
            return 1
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0
