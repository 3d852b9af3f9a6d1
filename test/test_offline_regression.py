"""
Offline regression: simulator -> bag -> replay -> perception -> control, against a stored summary.

The test generates a short bag from the embedded simulator (nothing is checked in): the drone
hovers while the hero walks away to the left, stands, walks back past the drone's axis to
its right, closer than the follow distance, and stands again. `record` writes image, depth,
camera_info, true_mask, true_hero_pose, odom and /clock in simulated time. `replay` then
plays the bag at half speed through the real perception node (the ONNX model) and the real
control node, over real rclpy, and the test checks:

- the bag holds every simulated frame, and perception processed nearly all of them;
- mask quality: mean hero IoU against the true masks (followme_common.scoring, per frame);
- hero detections: detected on the frames where the true hero is visible, centred on her,
  at the right range;
- commands: finite, within the control node's configured velocity and acceleration limits,
  yaw toward the side of the image the hero is on, forward toward the follow distance;
- a stored summary of expected behaviour (test/data/regression_summary.json): frame counts,
  detection rate, IoU, range error, command statistics and the final follow state, each
  with a tolerance. Perception is scored on the frames it really processed (matched by
  stamp), so a frame DDS drops shifts a mean a little instead of failing the test.

When the model or the simulator changes on purpose, regenerate the summary and commit it:

    FOLLOWME_UPDATE_REGRESSION=1 make test PYTEST_ARGS=test/test_offline_regression.py

(or, in a shell with the environment of `make test`, FOLLOWME_UPDATE_REGRESSION=1
.venv/bin/python -m pytest test/test_offline_regression.py). It rewrites the JSON with the
figures measured now and runs the other checks as usual (-s shows the figures).

The model is the shipped models/followme_fcn_int8.onnx; FOLLOWME_REGRESSION_MODEL=FILE uses another
one (a summary made with it fails against the shipped model, on purpose). Without the model
the test skips.
"""

from dataclasses import dataclass, field
import hashlib
import json
import math
import os
from pathlib import Path
import shutil
import time

from conftest import spin_until
import numpy as np
import pytest
import yaml

SUMMARY_FILE = Path(__file__).resolve().parent / 'data' / 'regression_summary.json'
UPDATE = os.environ.get('FOLLOWME_UPDATE_REGRESSION', '') not in ('', '0')
REGENERATE = 'FOLLOWME_UPDATE_REGRESSION=1 make test PYTEST_ARGS=test/test_offline_regression.py'

# The drone (4 m behind the start, 3 m up, facing +x) hovers: no cmd_vel reaches the simulator.
# The hero walks to 7 m ahead and 1.2 m left, stands 2 s, walks to 3 m ahead and 0.9 m right
# (inside the follow distance), stands 2 s. Standing still makes the expected command signs
# unambiguous (no velocity feedforward). Two groups cross near her and bystanders stroll by,
# so the masks have other people to tell apart from her.
SCENARIO = {
    'description': 'offline regression: away to the left, stand, back to the right, stand',
    'duration': 9.0,
    'hero': {'speed': 1.5, 'path': [[0.0, 0.0], [0.3, 0.0], [3.0, 1.2, 2.0], [-1.0, -0.9, 2.0]]},
    'crossings': [{'time': 1.5, 'along': 2.5, 'count': 3, 'speed': 1.2},
                  {'time': 5.5, 'along': -1.0, 'count': 2, 'speed': 1.2}],
    'bystanders': 3,
    'random_crossings': 0,
    'drone': {'behind': 4.0, 'height': 3.0},
}
SEED = 0
IMAGE_SIZE = 256
REPLAY_RATE = 0.5   # 5 frames per wall second: the newest-frame perception node sees each one
REPLAY_DELAY = 2.0  # s before the first message, so every subscriber has matched
RECORDED = {
    'image': 'sensor_msgs/msg/Image', 'depth': 'sensor_msgs/msg/Image',
    'camera_info': 'sensor_msgs/msg/CameraInfo', 'true_mask': 'sensor_msgs/msg/Image',
    'true_hero_pose': 'geometry_msgs/msg/PoseStamped', 'odom': 'nav_msgs/msg/Odometry',
    '/clock': 'rosgraph_msgs/msg/Clock',
}
REPLAYED = ['/image', '/depth', '/camera_info', '/odom']

# How far each stored figure may move before the test calls it a change in behaviour.
TOLERANCES = {
    'frames': 0,
    'frames_with_hero': 2,
    'detection_rate': 0.10,
    'false_detection_frames': 2,
    'mean_hero_iou': 0.08,
    'mean_others_iou': 0.10,
    'classic_weight': 0.10,
    'median_range_error_m': 0.25,
    'forward_mean': 0.15,
    'forward_max': 0.25,
    'forward_min': 0.25,
    'yaw_mean': 0.05,
    'yaw_max': 0.10,
    'yaw_min': 0.10,
    'final_state': None,  # exact
}
STILL_FOR_S = 1.0      # the hero counts as standing after this long without moving
STILL_MOTION_M = 0.05  # largest chest movement while "standing"
SIDE_MARGIN = 0.05     # |cx - width/2| beyond this share of the width: clearly on a side


@dataclass
class Frame:
    """One simulated camera frame: its stamp and the truth recorded with it."""

    stamp: tuple
    t: float
    true_ids: np.ndarray
    hero_optical: tuple


@dataclass
class Run:
    """What the replay produced, keyed by the image stamps (sec, nanosec)."""

    model: Path
    frames: list
    sim_frames: int
    bag_counts: dict
    bag_mbytes: float
    detections: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)   # (t, forward, left, up, yaw_rate)
    states: list = field(default_factory=list)
    perception_counts: dict = field(default_factory=dict)
    min_hero_pixels: int = 0
    control: dict = field(default_factory=dict)    # the control node's parameters
    wall_s: dict = field(default_factory=dict)


def regression_model():
    from followme_common import paths
    return Path(os.environ.get('FOLLOWME_REGRESSION_MODEL') or paths.default_model_file())


@pytest.fixture(scope='module')
def run(ros, tmp_path_factory):
    """Generate the bag, replay it through perception and control; return what came out."""
    model = regression_model()
    if not model.is_file():
        pytest.skip(f'no model at {model} (the shipped one is written by python -m '
                    'training.export; FOLLOWME_REGRESSION_MODEL=FILE tests another)')
    folder = tmp_path_factory.mktemp('regression')
    scenario = folder / 'regression.yaml'
    scenario.write_text(yaml.safe_dump(SCENARIO))
    started = time.monotonic()
    sim_frames, counts = _generate_bag(folder / 'bag', scenario)
    generated = time.monotonic()
    result = Run(model=model, frames=_read_truth(folder / 'bag'), sim_frames=sim_frames,
                 bag_counts=counts,
                 bag_mbytes=sum(f.stat().st_size for f in (folder / 'bag').iterdir()) / 1e6)
    _replay(folder / 'bag', result)
    shutil.rmtree(folder / 'bag')  # tens of MB; everything the tests need is in `result`
    result.wall_s = {'generate': generated - started, 'replay': time.monotonic() - generated}
    print(f"\noffline regression: generated in {result.wall_s['generate']:.1f} s, replayed in "
          f"{result.wall_s['replay']:.1f} s, bag {result.bag_mbytes:.1f} MB")
    return result


def _node_args():
    from followme_common import paths
    return ['--ros-args', '--params-file', str(paths.default_params_file())]


def _parameters(**values):
    from rclpy.parameter import Parameter
    return [Parameter(name, value=value) for name, value in values.items()]


def _generate_bag(bag, scenario):
    """Fly the scenario (hovering) while record writes the bag; return (frames, counts)."""
    from rclpy.executors import SingleThreadedExecutor

    from followme_common.bags.record import RecordNode
    from followme_sim.node import SimNode
    executor = SingleThreadedExecutor()
    recorder = RecordNode(parameter_overrides=_parameters(
        output=str(bag), topics=[f'{t}:{kind}' for t, kind in RECORDED.items()],
        reliability='reliable', use_sim_time=True))  # bag time = simulated time
    sim = SimNode(cli_args=_node_args(), parameter_overrides=_parameters(
        scenario=str(scenario), seed=SEED, image_width=IMAGE_SIZE, image_height=IMAGE_SIZE,
        lockstep=False, run_reference=False, use_sim_time=True, camera_qos_depth=100))
    try:
        # The simulator only runs when spun: wait until the recorder hears every topic.
        deadline = time.monotonic() + 20.0
        while not all(sim.count_subscribers(t) for t in RECORDED):
            assert time.monotonic() < deadline, 'the recorder never subscribed'
            time.sleep(0.05)
        time.sleep(0.5)
        executor.add_node(recorder)
        executor.add_node(sim)
        assert spin_until(executor, sim.done.is_set, 120.0), 'the simulation did not finish'
        frames = sim.sim.frames_captured
        spin_until(executor, lambda: recorder.writer.counts.get('/image') == frames, 10.0)
        spin_until(executor, lambda: False, 0.3)
        counts = dict(recorder.writer.counts)
        recorder.finish()
    finally:
        for node in (sim, recorder):
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    return frames, counts


def _read_truth(bag):
    """Return the frames in stamp order, with the true mask and hero position of each."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from followme_common.bags.storage import BagReader
    from followme_common.image_msgs import image_to_array
    masks, poses, stamps = {}, {}, []
    with BagReader(bag) as reader:
        for message in reader.messages(['/image', '/true_mask', '/true_hero_pose']):
            kind = PoseStamped if message.topic == '/true_hero_pose' else Image
            msg = deserialize_message(message.data, kind)
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            if message.topic == '/image':
                stamps.append(key)
            elif message.topic == '/true_mask':
                masks[key] = image_to_array(msg).copy()
            else:
                p = msg.pose.position
                poses[key] = (p.x, p.y, p.z)
    return [Frame(key, key[0] + key[1] * 1e-9, masks[key], poses[key])
            for key in sorted(stamps) if key in masks and key in poses]


def _replay(bag, result):
    """Play the bag through the perception and control nodes; collect their outputs."""
    from geometry_msgs.msg import TwistStamped
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray, String

    from followme_common.bags.replay import ReplayNode
    from followme_common.image_msgs import image_to_array
    from followme_control.node import ControlNode
    from followme_perception.detection import HeroDetection
    from followme_perception.node import PerceptionNode

    def on_detection(msg):
        detection = HeroDetection.from_list(msg.data)
        result.detections[(detection.stamp_sec, detection.stamp_nanosec)] = detection

    def on_mask(msg):
        result.masks[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = \
            image_to_array(msg).copy()

    def on_command(msg):
        twist, stamp = msg.twist, msg.header.stamp
        result.commands.append((stamp.sec + stamp.nanosec * 1e-9, twist.linear.x,
                                twist.linear.y, twist.linear.z, twist.angular.z))

    executor = SingleThreadedExecutor()
    # One ONNX Runtime thread: the same masks, and kind to a machine shared with other work.
    perception = PerceptionNode(cli_args=_node_args(), parameter_overrides=_parameters(
        model_path=str(result.model), use_sim_time=True, intra_op_threads=1))
    control = ControlNode(cli_args=_node_args(), parameter_overrides=_parameters(
        use_sim_time=True, twist_stamped=True))
    probe = rclpy.create_node('regression_probe')
    probe.create_subscription(Float64MultiArray, 'hero_detection', on_detection, 1000)
    probe.create_subscription(Image, 'mask', on_mask, 1000)
    probe.create_subscription(TwistStamped, 'cmd_vel', on_command, 1000)
    probe.create_subscription(
        String, 'follow_state', lambda msg: result.states.append(msg.data),
        QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    nodes = [perception, control, probe]
    for node in nodes:
        executor.add_node(node)
    try:
        replay = ReplayNode(parameter_overrides=_parameters(
            bag=str(bag), rate=REPLAY_RATE, delay=REPLAY_DELAY, topics=REPLAYED))
        nodes.append(replay)
        executor.add_node(replay)
        timeout = REPLAY_DELAY + 3.0 * len(result.frames) / 10.0 / REPLAY_RATE + 30.0
        assert spin_until(executor, replay.done.is_set, timeout), 'the replay did not finish'
        # The last frame is still in perception's worker, its commands in the control node.
        spin_until(executor, lambda: len(result.detections) >= len(result.frames), 3.0)
        spin_until(executor, lambda: False, 0.5)
        result.perception_counts = dict(perception.frame_counts())
        result.min_hero_pixels = perception.get_parameter('min_hero_pixels').value
        result.control = {p: control.get_parameter(p).value for p in (
            'rate_hz', 'follow_distance', 'camera_pitch_deg', 'forward_dead_band',
            'yaw_dead_band', 'forward_max_velocity', 'forward_max_acceleration',
            'yaw_max_velocity', 'yaw_max_acceleration', 'vertical_max_velocity',
            'vertical_max_acceleration')}
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()


# Figures ------------------------------------------------------------------------------------

def _one_hot(ids):
    return np.eye(3, dtype=np.float32)[ids]


def frame_scores(run):
    """Return (frame, FrameScore) for every frame perception published a mask for."""
    from followme_common.scoring import score_frame
    return [(f, score_frame(_one_hot(run.masks[f.stamp]), f.true_ids))
            for f in run.frames if f.stamp in run.masks]


def hero_visible(run, frame):
    """Tell whether the true mask shows as much hero as perception needs to report her."""
    from followme_common.scoring import HERO
    return int(np.count_nonzero(frame.true_ids == HERO)) >= run.min_hero_pixels


def summarise(run):
    """Return the figures the stored summary keeps, rounded so that the JSON reads well."""
    from followme_common.scoring import detection_weight, SetScore
    processed = [f for f in run.frames if f.stamp in run.detections]
    with_hero = [f for f in processed if hero_visible(run, f)]
    without = [f for f in processed if not hero_visible(run, f)]
    scores = frame_scores(run)
    visible_scores = [s for f, s in scores if hero_visible(run, f)]
    classic = SetScore(frames=[s for _, s in scores])
    errors = range_errors(run)
    forward = [c[1] for c in run.commands]
    yaw = [c[4] for c in run.commands]
    return {
        'frames': len(run.frames),
        'frames_with_hero': sum(hero_visible(run, f) for f in run.frames),
        'detection_rate': _round(np.mean([run.detections[f.stamp].present for f in with_hero])
                                 if with_hero else 0.0),
        'false_detection_frames': sum(run.detections[f.stamp].present for f in without),
        'mean_hero_iou': _round(np.mean([s.hero_iou for s in visible_scores])
                                if visible_scores else 0.0),
        'mean_others_iou': _round(np.mean([s.class_iou[1] for _, s in scores])
                                  if scores else 0.0),
        'classic_weight': _round(detection_weight([classic])),
        'median_range_error_m': _round(np.median(np.abs(errors))) if errors else None,
        'forward_mean': _round(np.mean(forward)), 'forward_max': _round(max(forward)),
        'forward_min': _round(min(forward)),
        'yaw_mean': _round(np.mean(yaw)), 'yaw_max': _round(max(yaw)),
        'yaw_min': _round(min(yaw)),
        'final_state': run.states[-1] if run.states else None,
    }


def _round(value):
    return round(float(value), 3)


def range_errors(run):
    """Return perceived minus true range of the hero's chest, on frames with a range."""
    errors = []
    for f in run.frames:
        detection = run.detections.get(f.stamp)
        if detection is not None and detection.has_range:
            errors.append(detection.range_m - math.dist((0.0, 0.0, 0.0), f.hero_optical))
    return errors


def standing_commands(run):
    """
    Return the commands sent while the hero has stood still for STILL_FOR_S and is seen.

    Each comes with the newest frame at or before the command and that frame's detection.
    """
    picked = []
    for t, forward, left, up, yaw in run.commands:
        past = [f for f in run.frames if f.t <= t + 1e-6]
        recent = [f for f in past if f.t >= t - STILL_FOR_S - 1e-6]
        if not past or past[0].t > t - STILL_FOR_S:
            continue
        moved = max(math.dist(f.hero_optical, recent[-1].hero_optical) for f in recent)
        detection = run.detections.get(past[-1].stamp)
        if moved < STILL_MOTION_M and detection is not None and detection.present:
            picked.append((t, forward, yaw, past[-1], detection))
    return picked


# Tests ----------------------------------------------------------------------------------------

def test_bag_holds_every_frame_and_perception_processed_them(run):
    assert run.bag_counts.get('/image') == run.sim_frames, (
        f'the simulator published {run.sim_frames} frames, the bag holds {run.bag_counts}')
    for topic in RECORDED:
        name = topic if topic.startswith('/') else f'/{topic}'
        assert run.bag_counts.get(name, 0) > 0, f'{name} was not recorded'
    assert len(run.frames) == run.sim_frames, 'every frame has its true mask and hero pose'
    assert run.bag_mbytes < 80.0, 'the generated bag stays small'
    processed = sum(f.stamp in run.detections for f in run.frames)
    assert processed >= 0.9 * len(run.frames), (
        f'perception processed {processed} of {len(run.frames)} frames '
        f'({run.perception_counts}); the replay rate is too fast for this machine')
    assert len(run.masks) >= 0.9 * len(run.frames)


def test_masks_match_the_true_masks(run):
    scores = frame_scores(run)
    visible = [s.hero_iou for f, s in scores if hero_visible(run, f)]
    assert len(visible) >= 0.5 * len(run.frames), 'the scenario keeps the hero in view'
    assert np.mean(visible) > 0.3, f'mean hero IoU {np.mean(visible):.3f}: the masks are poor'
    # The classic rule (hero present = more than 3 pixels), on the masks perception published.
    from followme_common.scoring import detection_weight, SetScore
    false_positives = sum(s.pred_present and not s.truth_present for _, s in scores)
    assert false_positives <= 0.1 * len(scores)
    assert detection_weight([SetScore(frames=[s for _, s in scores])]) >= 0.6


def test_hero_is_detected_where_visible_at_her_place_and_range(run):
    from followme_common.scoring import HERO
    with_hero = [f for f in run.frames if f.stamp in run.detections and hero_visible(run, f)]
    found = [(f, run.detections[f.stamp]) for f in with_hero if run.detections[f.stamp].present]
    assert len(found) >= 0.6 * len(with_hero), f'hero found on {len(found)}/{len(with_hero)}'
    elsewhere = []
    for f, detection in found:
        assert (detection.image_width, detection.image_height) == (IMAGE_SIZE, IMAGE_SIZE)
        rows, cols = np.nonzero(f.true_ids == HERO)
        # The centroid lies on the true hero's box (a little slack for a partial mask).
        if not (cols.min() - 3 <= detection.cx <= cols.max() + 3
                and rows.min() - 3 <= detection.cy <= rows.max() + 3):
            elsewhere.append(round(f.t, 1))
    assert len(elsewhere) <= 0.1 * len(found), f'detections off the hero at t = {elsewhere}'
    errors = range_errors(run)
    assert len(errors) >= 0.9 * len(found), 'depth gives a range on nearly every detection'
    assert np.median(np.abs(errors)) < 0.5, f'range errors (m): {np.round(errors, 2)}'


def test_commands_are_finite_and_within_the_configured_limits(run):
    limits = run.control
    assert len(run.commands) >= 0.8 * SCENARIO['duration'] * limits['rate_hz']
    for t, forward, left, up, yaw in run.commands:
        assert all(math.isfinite(v) for v in (t, forward, left, up, yaw))
        assert abs(forward) <= limits['forward_max_velocity'] + 1e-9
        assert abs(yaw) <= limits['yaw_max_velocity'] + 1e-9
        assert abs(up) <= limits['vertical_max_velocity'] + 1e-9
        assert left == 0.0, 'the follow law never slides sideways'
    # The change between two commands stays within the acceleration limits.
    for before, after in zip(run.commands, run.commands[1:]):
        dt = min(after[0] - before[0], 2.0 / limits['rate_hz'])  # as the controller bounds it
        for index, axis in ((1, 'forward'), (3, 'vertical'), (4, 'yaw')):
            step = abs(after[index] - before[index])
            assert step <= limits[f'{axis}_max_acceleration'] * dt + 1e-6, (axis, after[0])


def test_command_signs_follow_the_hero(run):
    """While she stands: yaw toward her side of the image, forward toward the follow distance."""
    from followme_control.follow import optical_to_body
    limits = run.control
    checked = {'left': 0, 'right': 0, 'far': 0, 'near': 0}
    for t, forward, yaw, frame, detection in standing_commands(run):
        offset = (detection.cx - detection.image_width / 2) / detection.image_width
        if abs(offset) > SIDE_MARGIN:
            side = 'left' if offset < 0 else 'right'
            checked[side] += 1
            assert (yaw > 0) == (side == 'left') and yaw != 0.0, (
                f't={t:.2f}: hero on the {side} (cx {detection.cx:.0f}), yaw rate {yaw:+.3f}')
        ahead, left, _ = optical_to_body(*frame.hero_optical, limits['camera_pitch_deg'])
        error = math.hypot(ahead, left) - limits['follow_distance']
        if abs(error) > limits['forward_dead_band'] + 0.3:
            kind = 'far' if error > 0 else 'near'
            checked[kind] += 1
            assert (forward > 0) == (error > 0) and forward != 0.0, (
                f't={t:.2f}: distance error {error:+.2f} m, forward {forward:+.3f} m/s')
    assert min(checked.values()) >= 5, f'too few commands to judge the signs: {checked}'


def test_behaviour_matches_the_stored_summary(run):
    summary = summarise(run)
    stored_as = {'model': run.model.name, 'model_sha256': _sha256(run.model),
                 'scenario': SCENARIO, 'seed': SEED, 'image_size': IMAGE_SIZE,
                 'replay_rate': REPLAY_RATE, 'figures': summary}
    print(f'\nregression figures: {json.dumps(summary)}')
    if UPDATE:
        SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
        SUMMARY_FILE.write_text(json.dumps(stored_as, indent=2) + '\n')
        print(f'wrote {SUMMARY_FILE}')
        return
    assert SUMMARY_FILE.is_file(), f'no stored summary at {SUMMARY_FILE}: run {REGENERATE}'
    stored = json.loads(SUMMARY_FILE.read_text())
    changes = []
    for name, tolerance in TOLERANCES.items():
        expected, got = stored['figures'].get(name), summary[name]
        if tolerance is None or expected is None or got is None:
            same = expected == got
        else:
            same = abs(got - expected) <= tolerance + 1e-9
        if not same:
            changes.append(f'  {name}: stored {expected}, now {got}'
                           + (f' (tolerance {tolerance})' if tolerance is not None else ''))
    if changes:
        setup = [k for k in ('scenario', 'seed', 'image_size', 'replay_rate')
                 if stored.get(k) != stored_as[k]]
        if setup:
            why = f"the test's own set-up changed: {', '.join(setup)}"
        elif stored.get('model_sha256') != stored_as['model_sha256']:
            why = 'the model differs from the one the summary was made with'
        else:
            why = 'same model: perception, control, the simulator or the bag tools changed'
        pytest.fail('behaviour changed (' + why + '):\n' + '\n'.join(changes)
                    + f'\nIf the change is intended, regenerate the summary: {REGENERATE}')


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
