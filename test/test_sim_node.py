"""sim_node over real rclpy and Fast DDS: topics, a short closed loop, bad cmd_vel."""

import math

from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from followme_common.image_msgs import image_to_array
from followme_control.node import ControlNode
from followme_sim.node import main, SimNode
from geometry_msgs.msg import PoseStamped, Twist
from nav_msgs.msg import Odometry
import pytest
import rclpy
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
import yaml


def _scenario_file(tmp_path, duration):
    path = tmp_path / 'walk.yaml'
    path.write_text(yaml.safe_dump({
        'description': 'test walk', 'duration': duration,
        'hero': {'speed': 1.3, 'path': [[0, 0, 0.5], [40, 0]]},
        'bystanders': 2, 'drone': {'behind': 4.0, 'height': 3.0}}))
    return str(path)


def _sim(tmp_path, duration, **overrides):
    values = {'scenario': _scenario_file(tmp_path, duration), 'image_width': 96,
              'image_height': 96, 'lockstep': False, 'run_reference': False,
              'use_sim_time': True}
    values.update(overrides)
    return SimNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def test_publishes_camera_truth_and_clock(executor, tmp_path):
    sim = _sim(tmp_path, 2.0, real_time_factor=4.0)
    probe = rclpy.create_node('sim_probe')
    got = {}
    for topic, kind in (('image', Image), ('depth', Image), ('true_mask', Image),
                        ('camera_info', CameraInfo), ('odom', Odometry),
                        ('true_hero_pose', PoseStamped), ('/clock', Clock)):
        probe.create_subscription(kind, topic, lambda msg, t=topic: got.setdefault(t, msg), 10)
    executor.add_node(sim)
    executor.add_node(probe)
    assert spin_until(executor, lambda: len(got) == 7, timeout=30.0), sorted(got)
    image, depth, mask = got['image'], got['depth'], got['true_mask']
    assert (image.encoding, depth.encoding, mask.encoding) == ('rgb8', '32FC1', 'mono8')
    assert image.header.stamp == depth.header.stamp == mask.header.stamp
    assert image.header.frame_id == got['camera_info'].header.frame_id == 'camera_optical'
    assert got['camera_info'].k[0] == pytest.approx(48 / math.tan(math.radians(26.5)))
    assert set(image_to_array(mask).ravel()) <= {0, 1, 2}
    pose = got['true_hero_pose'].pose.position
    assert 3.0 < pose.z < 6.0 and abs(pose.x) < 0.5  # ahead of the camera, centred


def test_closed_loop_follows_walking_hero(executor, tmp_path):
    """The real control node, fed the true hero pose, flies the drone after the hero."""
    sim = _sim(tmp_path, 8.0)
    control = ControlNode(
        cli_args=['--ros-args', '-r', 'hero_pose:=true_hero_pose'],
        parameter_overrides=[Parameter('use_sim_time', value=True)])
    executor.add_node(sim)
    executor.add_node(control)
    start = sim.sim.drone.position.copy()
    assert spin_until(executor, sim.done.is_set, timeout=120.0)
    end = sim.sim.drone.position
    hero_x = sim.scenario.hero.path.state(sim.sim.time)[0]
    assert end[0] - start[0] > 5.0                       # flew after her
    assert 2.5 < hero_x - end[0] < 6.5                   # and kept about 4 m behind
    assert sim.sim.log.frames[-1][1]                     # with her in view
    assert sim.sim.log.commands['ok'] > 50 and not sim.sim.log.collisions
    summary = sim.write_outputs(tmp_path / 'run')
    assert summary['our_loop']['hero_in_view_pct'] > 90.0
    assert (tmp_path / 'run' / 'summary.json').is_file()
    assert (tmp_path / 'run' / 'trajectories.png').stat().st_size > 0
    assert (tmp_path / 'run' / 'follow.mp4').stat().st_size > 0


def test_lockstep_applies_each_command_at_its_controller_tick(executor, tmp_path):
    """In lockstep the sim waits at every 20 Hz control tick for that tick's cmd_vel."""
    sim = _sim(tmp_path, 4.0, lockstep=True, lockstep_timeout=0.5)
    control = ControlNode(
        cli_args=['--ros-args', '-r', 'hero_pose:=true_hero_pose'],
        parameter_overrides=[Parameter('use_sim_time', value=True)])
    executor.add_node(sim)
    executor.add_node(control)
    assert spin_until(executor, sim.done.is_set, timeout=120.0)
    summary = sim.write_outputs(tmp_path / 'run')
    # No perception node: one timeout for frame 0's hero_detection, then no more waiting for
    # it; cmd_vel came at every tick, each while the simulated clock stood at that tick.
    assert summary['lockstep_timeouts'] == 1
    assert summary['command_delay_sim_ms_max'] == 0.0
    assert sim.sim.log.commands['ok'] >= 4.0 * 20 - 2


def test_lockstep_loop_gives_the_same_flight_twice(ros, tmp_path):
    """Same scenario, same seed, real control node over DDS: the very same trajectory."""
    from rclpy.executors import SingleThreadedExecutor
    flights = []
    for run in range(2):
        executor = SingleThreadedExecutor()
        sim = _sim(tmp_path, 3.0, lockstep=True, lockstep_timeout=0.5)
        control = ControlNode(
            cli_args=['--ros-args', '-r', 'hero_pose:=true_hero_pose'],
            parameter_overrides=[Parameter('use_sim_time', value=True)])
        for node in (sim, control):
            executor.add_node(node)
        assert spin_until(executor, sim.done.is_set, timeout=60.0)
        flights.append([row[:4] for row in sim.sim.log.steps])  # t, x, y, z
        for node in (sim, control):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    assert len(flights[0]) == len(flights[1]) > 100
    assert flights[0] == flights[1]


def test_lockstep_without_a_loop_runs_on_after_one_timeout_per_input(executor, tmp_path):
    sim = _sim(tmp_path, 2.0, lockstep=True, lockstep_timeout=0.3)
    executor.add_node(sim)
    assert spin_until(executor, sim.done.is_set, timeout=30.0)
    assert sim.lockstep.timeouts == 2                 # one hero_detection, one cmd_vel


def test_bad_cmd_vel_is_rejected_or_clamped_and_counted(executor, tmp_path):
    sim = _sim(tmp_path, 60.0, real_time_factor=1.0, diagnostics_period=0.2)
    probe = rclpy.create_node('bad_commander')
    pub = probe.create_publisher(Twist, 'cmd_vel', 10)
    reports = []
    probe.create_subscription(DiagnosticArray, '/diagnostics', reports.append, 10)
    executor.add_node(sim)
    executor.add_node(probe)
    bad = [Twist(), Twist(), Twist()]
    bad[0].linear.x = math.nan
    bad[1].angular.z = math.inf
    bad[2].linear.x = 500.0          # a fast command, not garbage: clamped to max_speed
    commands = sim.sim.log.commands

    def send_and_check():
        for msg in bad:
            pub.publish(msg)
        return commands['rejected'] >= 2 and commands['clamped'] >= 1

    assert spin_until(executor, send_and_check, timeout=20.0)
    assert spin_until(executor, lambda: any(
        kv.key == 'cmd_rejected' and int(kv.value) >= 2
        for r in reports for s in r.status for kv in s.values), timeout=10.0)
    assert all(math.isfinite(v) for v in sim.sim.drone.velocity)
    speed = math.hypot(*sim.sim.drone.velocity[:2])
    assert speed <= sim.settings.limits.max_speed + 1e-6


def test_refuses_bad_parameters(ros, tmp_path):
    sim = _sim(tmp_path, 2.0, real_time_factor=1.0)
    result = sim.set_parameters([Parameter('camera_pitch_deg', value=120.0)])[0]
    assert not result.successful and 'out of range' in result.reason  # the descriptor
    result = sim.set_parameters([Parameter('seed', value=5)])[0]
    assert not result.successful and 'restart' in result.reason
    assert sim.set_parameters([Parameter('camera_pitch_deg', value=30.0)])[0].successful
    assert sim.settings.camera.pitch_deg == 30.0
    sim.destroy_node()


def test_help_lists_the_parameters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['sim_node', '--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: sim_node') and "scenario (default 'city_walk')" in out
