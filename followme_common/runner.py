"""
followme-run: start the launch file's nodes in one process, without `ros2 launch`.

It reads the same node list (followme_common.bringup) and the same parameter file as
launch/follow.launch.py, spins them on one SingleThreadedExecutor and shuts down cleanly on
Ctrl-C. A node that runs a finite job (the embedded simulator's scenario) can end the run:
it exposes `done` (a threading.Event), optionally `progress()` -> (current, total) for the
progress bar and `write_outputs(folder)` for what it leaves behind.
"""

import argparse
import os
from pathlib import Path
import sys
import threading
import time

from followme_common import bringup, paths


def build_parser():
    parser = argparse.ArgumentParser(
        prog='followme-run',
        description='Start the followme nodes in one process (the launch-free twin of '
                    '`ros2 launch followme follow.launch.py`).')
    parser.add_argument('--sim', choices=bringup.SIM_CHOICES, default='embedded',
                        help='which drone to connect to (default: embedded)')
    parser.add_argument('--params-file', type=Path, default=paths.default_params_file(),
                        help='parameter YAML (default: the package config/followme.yaml)')
    parser.add_argument('--model', type=Path, default=None,
                        help='ONNX model for the perception node (default: the shipped model)')
    parser.add_argument('--namespace', default='', help='namespace for every node and topic')
    parser.add_argument('--image', default='image', help='camera image topic')
    parser.add_argument('--depth', default='depth', help='depth image topic')
    parser.add_argument('--camera-info', default='camera_info', help='camera info topic')
    parser.add_argument('--use-sim-time', choices=('auto', 'true', 'false'), default='auto',
                        help='use /clock (auto: true with --sim embedded)')
    parser.add_argument('--fastdds-profile', default=paths.default_fastdds_profile(),
                        help='Fast DDS XML profile for the process, "" for none (default: '
                             '$FASTRTPS_DEFAULT_PROFILES_FILE, else the package '
                             'config/fastdds.xml: large images over shared memory)')
    parser.add_argument('--log-level', default='info',
                        choices=('debug', 'info', 'warn', 'error', 'fatal'))
    parser.add_argument('--output', type=Path, default=Path('runs/latest'),
                        help='folder for what a finite run writes (video, plot, summary)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help='override one parameter, e.g. --set sim_node.scenario:=turns')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.params_file.is_file():
        parser.error(f'parameter file {args.params_file} does not exist')
    if args.fastdds_profile and not Path(args.fastdds_profile).is_file():
        parser.error(f'Fast DDS profile {args.fastdds_profile} does not exist (give "" for '
                     'none)')
    if args.model is not None and not args.model.is_file():
        parser.error(f'model file {args.model} does not exist')
    args.overrides = _parse_overrides(parser, args.set)
    return args


def _parse_overrides(parser, items):
    import yaml
    overrides = {}
    for item in items:
        key, sep, value = item.partition(':=')
        node, dot, param = key.partition('.')
        if not sep or not dot or not param:
            parser.error(f"--set expects NODE.PARAM:=VALUE, got '{item}'")
        overrides.setdefault(node, {})[param] = yaml.safe_load(value)
    return overrides


def node_overrides(spec, args):
    """Parameter overrides for one node: the launch file passes the same ones."""
    from rclpy.parameter import Parameter
    values = dict(args.overrides.get(spec.name, {}))
    if spec.name == 'perception_node' and args.model is not None:
        values['model_path'] = str(args.model)
    values['use_sim_time'] = (args.sim == 'embedded' if args.use_sim_time == 'auto'
                              else args.use_sim_time == 'true')
    return [Parameter(name, value=value) for name, value in values.items()]


def run(args) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    specs = bringup.nodes_for(args.sim)
    rcl_args = ['--ros-args', '--params-file', str(args.params_file),
                '--log-level', args.log_level]
    print(f'followme-run: sim={args.sim}, nodes: {", ".join(s.name for s in specs)}')
    print(f'followme-run: parameters from {args.params_file}')
    remaps = bringup.camera_remaps(args.image, args.depth, args.camera_info)

    # Read by Fast DDS when rclpy.init() creates the participant, so set it first.
    os.environ.update(bringup.fastdds_environment(args.fastdds_profile))
    # rclpy 7 (Jazzy) returns None from init(), so no `with rclpy.init()` context here.
    rclpy.init(args=rcl_args)
    nodes = []
    executor = None
    spin_thread = None
    try:
        for spec in specs:
            cli = ['--ros-args'] + [a for src, dst in (remaps if spec.camera_inputs else [])
                                    for a in ('-r', f'{src}:={dst}')]
            nodes.append(spec.node_class()(namespace=args.namespace, cli_args=cli,
                                           parameter_overrides=node_overrides(spec, args)))
        # One executor thread: the perception node works on a thread of its own, and more
        # executor threads only fought it and each other for the GIL (the simulator loop
        # ran at 0.81x real time in crowd_crossing with two, 1.88x with one).
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        finite = [n for n in nodes if hasattr(n, 'done')]
        spin_thread = threading.Thread(target=executor.spin, daemon=True)
        spin_thread.start()
        print('followme-run: running (Ctrl-C to stop)', flush=True)
        if not _wait(finite, rclpy.ok, show_progress=not args.no_progress):
            print('\nfollowme-run: shut down by a signal before the scenario finished')
            return 1
        for node in finite:
            if hasattr(node, 'write_outputs'):
                node.write_outputs(args.output)
    except KeyboardInterrupt:
        print('\nfollowme-run: interrupted, shutting down')
    except ExternalShutdownException:
        pass
    finally:
        if executor is not None:
            executor.shutdown()
        if spin_thread is not None:
            # A thread still inside rclpy at interpreter exit aborts the process.
            spin_thread.join(timeout=5.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _wait(finite_nodes, running, show_progress):
    """
    Block until every finite node is done, with a progress bar; forever when none is.

    Return False when `running()` turns false first: rclpy's signal handler shuts the context
    down on SIGTERM (and SIGINT), and the runner must then stop instead of waiting on.
    """
    bar = None
    if show_progress and finite_nodes and hasattr(finite_nodes[0], 'progress'):
        from tqdm import tqdm
        _, total = finite_nodes[0].progress()
        bar = tqdm(total=round(total, 1), unit='sim s', desc='following')
    try:
        while not finite_nodes or not all(n.done.wait(0.2) for n in finite_nodes):
            if not running():
                return False
            if not finite_nodes:
                time.sleep(0.2)
            if bar is not None:
                bar.n = round(finite_nodes[0].progress()[0], 1)
                bar.refresh()
        if bar is not None:
            bar.n = bar.total
    finally:
        if bar is not None:
            bar.close()
    return True


def main(argv=None):
    sys.exit(run(parse_args(argv)))


if __name__ == '__main__':
    main()
