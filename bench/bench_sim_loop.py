"""
Benchmark the closed loop: simulator + perception + control in one process, camera at 10 Hz.

    python bench/bench_sim_loop.py [--model FILE] [--scenario city_walk] [--rate 10]

Prints the real-time factor (simulated seconds per wall second; >= 1 means the loop keeps up
with real time), the simulator's own cost per frame (render + publish) and the follow
figures. Speed only needs a model of the right shape: any followme ONNX export will do.
"""

import argparse
import json
from pathlib import Path
import sys
import threading
import time

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from followme_common import paths  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--model', type=Path, default=paths.default_model_file(),
                        help='ONNX model for perception (default: the shipped model)')
    parser.add_argument('--scenario', default='city_walk', help='scenario (default city_walk)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate (Hz, default 10)')
    parser.add_argument('--truth', action='store_true',
                        help='no perception: control follows true_hero_pose (the sim + '
                             'control cost alone)')
    parser.add_argument('--json', type=Path, help='also write the figures to this file')
    args = parser.parse_args(argv)
    if not args.truth and not args.model.is_file():
        parser.error(f'model {args.model} not found: pass --model FILE (an export from '
                     'training/export.py) or --truth')
    return args


def main(argv=None):
    args = parse_args(argv)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from followme_control.node import ControlNode
    from followme_sim import simulation, world
    from followme_sim.node import SimNode

    rclpy.init(args=['--ros-args', '--params-file', str(paths.default_params_file())])
    sim_time = [Parameter('use_sim_time', value=True)]
    sim = SimNode(parameter_overrides=sim_time + [
        Parameter('scenario', value=args.scenario), Parameter('seed', value=args.seed),
        Parameter('camera_rate', value=args.rate),
        # Truth-driven, no detection comes: one timeout, then it waits for cmd_vel only.
        Parameter('lockstep_timeout', value=1.0),
        Parameter('run_reference', value=False)])
    nodes = [sim]
    control_args = ['--ros-args', '-r', 'hero_pose:=true_hero_pose'] if args.truth else []
    nodes.append(ControlNode(cli_args=control_args, parameter_overrides=sim_time))
    if not args.truth:
        from followme_perception.node import PerceptionNode
        nodes.append(PerceptionNode(parameter_overrides=sim_time + [
            Parameter('model_path', value=str(args.model))]))
    executor = SingleThreadedExecutor()  # as followme-run
    for node in nodes:
        executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    start = time.monotonic()
    while not sim.done.wait(0.2):
        if not rclpy.ok():  # SIGTERM / Ctrl-C: rclpy shut the context down
            sys.exit('bench_sim_loop: interrupted')
    wall = time.monotonic() - start
    duration = sim.progress()[1]
    summary = sim.write_outputs(REPO / 'runs' / 'bench_sim_loop')

    # The simulator's own cost: one frame's step + render, without ROS.
    scen = sim.scenario
    bare = simulation.Simulation(scen, simulation.SimSettings(camera=world.CameraModel()))
    t0 = time.perf_counter()
    for k in range(1, 51):
        bare.advance(k / args.rate)
        bare.capture()
    frame_ms = (time.perf_counter() - t0) / 50 * 1000
    bare.close()
    executor.shutdown()
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()

    figures = {'scenario': args.scenario, 'camera_rate_hz': args.rate,
               'perception': 'truth' if args.truth else str(args.model),
               'sim_seconds': duration, 'wall_seconds': round(wall, 2),
               'real_time_factor': round(duration / wall, 2),
               'sim_frame_ms': round(frame_ms, 1),
               'lockstep_timeouts': summary['lockstep_timeouts'],
               'perception_wait_ms_mean': summary['perception_wait_ms_mean'],
               'our_loop': summary['our_loop']}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
