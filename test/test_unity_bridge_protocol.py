"""The Unity bridge's ROS-free core: frames, pose strings, camera maths, payloads, lost count."""

import base64
import math

import cv2
from followme_control.unity_bridge import protocol
from followme_control.unity_bridge.protocol import FrameError, Pose
import numpy as np
import pytest
from quadsim_client import encode_image, make_frame


def pose(x, y, z, roll_deg, pitch_deg, yaw_deg):
    return Pose(np.array([x, y, z], float), np.radians([roll_deg, pitch_deg, yaw_deg]))


def test_pose_string_is_degrees_wrapped_into_radians():
    parsed = protocol.parse_pose('1.5000,-2.0000,10.0000,0.0000,-190.0000,90.0000')
    assert parsed.position.tolist() == [1.5, -2.0, 10.0]
    # the simulator's negated Unity angles below -180 wrap by +360, as the original script did
    assert parsed.rpy == pytest.approx(np.radians([0.0, 170.0, 90.0]))


@pytest.mark.parametrize('text', ['1,2,3,4,5', '1,2,3,4,5,6,7', '1,2,3,a,5,6', '1,2,nan,4,5,6',
                                  '', 'inf,0,0,0,0,0', 12])
def test_malformed_pose_strings_are_refused(text):
    with pytest.raises(FrameError) as error:
        protocol.parse_pose(text)
    assert error.value.kind == 'bad_pose'


def test_timestamp_is_kept_to_the_nanosecond():
    assert protocol.parse_timestamp('1504814505.23149') == 1504814505_231490000
    assert protocol.parse_timestamp(12.5) == 12_500_000_000
    for bad in ('soon', '-3', '0', 'nan', '1e12', None, True):
        with pytest.raises(FrameError) as error:
            protocol.parse_timestamp(bad)
        assert error.value.kind == 'bad_timestamp'


def test_rotation_is_fixed_axis_roll_pitch_yaw_and_quaternion_matches():
    rotation = protocol.rpy_to_matrix(0.0, 0.0, math.pi / 2)
    assert rotation @ [1, 0, 0] == pytest.approx([0, 1, 0])  # +yaw turns x toward y (left)
    pitch_down = protocol.rpy_to_matrix(0.0, math.radians(30), 0.0)
    assert pitch_down @ [1, 0, 0] == pytest.approx([math.cos(math.radians(30)), 0, -0.5])
    s = math.sin(math.pi / 4)
    assert protocol.matrix_to_quaternion(rotation) == pytest.approx((0, 0, s, s))
    rng = np.random.default_rng(0)
    for roll, pitch, yaw in rng.uniform(-3, 3, (20, 3)):
        x, y, z, w = protocol.matrix_to_quaternion(protocol.rpy_to_matrix(roll, pitch, yaw))
        rebuilt = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        assert rebuilt == pytest.approx(protocol.rpy_to_matrix(roll, pitch, yaw), abs=1e-9)


def test_optical_point_to_world_hand_computed():
    # Camera at (1, 2, 10), level, yaw 90 deg: it looks along world +y; its right is world +x.
    camera = pose(1, 2, 10, 0, 0, 90)
    # 4 m ahead, 0.5 m right, 0.2 m down in the optical frame (z fwd, x right, y down).
    world = protocol.optical_to_world(camera, [0.5, 0.2, 4.0])
    assert world == pytest.approx([1.5, 6.0, 9.8])
    assert protocol.world_to_optical(camera, world) == pytest.approx([0.5, 0.2, 4.0])
    # Pitched 30 deg down, yaw 0: straight ahead 4 m is 4 cos 30 forward and 2 m lower.
    tilted = pose(0, 0, 10, 0, 30, 0)
    assert protocol.optical_to_world(tilted, [0, 0, 4]) == pytest.approx(
        [4 * math.cos(math.radians(30)), 0, 8.0])


def test_classic_pinhole_and_back_projection_use_column_for_x():
    camera = protocol.PinholeCamera(256, 256)
    assert camera.fx == pytest.approx(256.0) and camera.fy == pytest.approx(256.0)
    assert (camera.cx, camera.cy) == (127.5, 127.5)
    assert camera.hfov_deg == pytest.approx(53.130102, abs=1e-5)
    # u is the column (x, right), v the row (y, down): the original script swapped them.
    point = camera.back_project(u=255.5, v=127.5, depth=10.0)
    assert point == pytest.approx([5.0, 0.0, 10.0])
    assert camera.k()[0] == camera.fx and camera.p()[2] == camera.cx


def test_frame_decodes_to_exact_pixels_and_full_resolution_depth():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    units = np.zeros((256, 256), np.uint8)
    units[10, 200] = 255  # row 10, column 200: far from its transpose (200, 10)
    frame = protocol.FrameDecoder().decode(make_frame(rgb=rgb, depth_units=units))
    assert np.array_equal(frame.rgb, rgb)
    assert frame.depth_m.dtype == np.float32 and frame.depth_m.shape == (256, 256)
    assert frame.depth_m[10, 200] == pytest.approx(50.0)
    assert frame.depth_m[200, 10] == 0.0
    assert frame.stamp_ns == 1504814505_231490000


def test_jpeg_frames_decode_too():
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[:, :128] = (200, 30, 10)
    frame = protocol.FrameDecoder().decode(make_frame(rgb=rgb, rgb_format='.jpg'))
    # JPEG is lossy (and rings at the edge): compare the halves, which also checks RGB order
    assert frame.rgb[:, :120].mean(axis=(0, 1)) == pytest.approx([200, 30, 10], abs=3)
    assert frame.rgb[:, 136:].mean(axis=(0, 1)) == pytest.approx([0, 0, 0], abs=3)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode('ascii')


def _png16() -> str:
    ok, data = cv2.imencode('.png', np.zeros((256, 256), np.uint16))
    return _b64(data.tobytes())


@pytest.mark.parametrize('changes, kind', [
    ({'rgb_image': '@@not base64@@'}, 'bad_base64'),
    ({'rgb_image': 'QUJDR'}, 'bad_base64'),  # truncated
    ({'depth_image': _b64(b'GIF89a' + bytes(100))}, 'not_jpeg_or_png'),
    ({'rgb_image': ''}, 'not_jpeg_or_png'),
    ({'rgb_image': _b64(b'\x89PNG\r\n\x1a\n' + bytes(50))}, 'bad_image'),
    ({'depth_image': _png16()}, 'bad_image'),
    ({'rgb_image': encode_image(np.zeros((128, 128, 3), np.uint8))}, 'wrong_size'),
    ({'depth_image': encode_image(np.zeros((256, 200), np.uint8))}, 'wrong_size'),
    ({'pose': '1,2,3'}, 'bad_pose'),
    ({'gimbal_pose': 'x,y,z,r,p,y'}, 'bad_pose'),
    ({'timestamp': 'yesterday'}, 'bad_timestamp'),
    ({'rgb_image': None}, 'missing_field'),
])
def test_bad_frames_name_their_problem(changes, kind):
    payload = {**make_frame(), **changes}
    with pytest.raises(FrameError) as error:
        protocol.FrameDecoder().decode(payload)
    assert error.value.kind == kind


@pytest.mark.parametrize('payload', [None, 'text', [], {'timestamp': '1'}])
def test_missing_fields_and_non_objects(payload):
    with pytest.raises(FrameError) as error:
        protocol.FrameDecoder().decode(payload)
    assert error.value.kind == 'missing_field'


def test_object_lost_after_more_than_n_frames_without_the_hero():
    tracker = protocol.LostTracker(lost_after_frames=6)
    assert not tracker.frame_arrived(1)  # nothing found yet: nothing to lose
    tracker.hero_seen(1)
    assert [tracker.frame_arrived(stamp) for stamp in range(2, 8)] == [False] * 6
    assert tracker.frame_arrived(8)      # the 7th frame in a row without the hero
    assert not tracker.frame_arrived(9)  # sent once
    assert not tracker.following


def test_a_late_hero_pose_counts_for_its_own_frame():
    tracker = protocol.LostTracker(lost_after_frames=2)
    tracker.hero_seen(1)
    assert not tracker.frame_arrived(2)
    assert not tracker.frame_arrived(3)
    tracker.hero_seen(2)  # perception's answer for frame 2 arrives after frame 3
    assert not tracker.frame_arrived(4)  # misses since frame 2: frames 3, 4
    assert tracker.frame_arrived(5)


def test_pose_history_keeps_the_newest_frames():
    history = protocol.PoseHistory(2)
    for stamp in (1, 2, 3):
        history.add(stamp, pose(stamp, 0, 0, 0, 0, 0))
    assert history.get(1) is None and history.get(3).position[0] == 3


def test_velocity_target_is_yaw_rotated_motion_over_the_horizon():
    drone = pose(1, 2, 10, 20, 10, 90)  # roll and pitch do not tilt the commanded motion
    target = protocol.velocity_target(drone, (1.0, 0.5, -0.2), horizon_s=2.0)
    assert target == pytest.approx([1 - 1.0, 2 + 2.0, 10 - 0.4])


def test_payloads_are_json_objects_with_finite_numbers():
    assert protocol.object_detected_payload(np.array([1, 2, 3])) == {'coords': [1.0, 2.0, 3.0]}
    assert protocol.object_lost_payload() == {'data': ''}
    marker = protocol.box_marker_payload(7, [1, 2, 3], 0.4)
    assert marker == {'id': 7, 'pose': [1.0, 2.0, 3.0, 0.0, 0.0, 0.0],
                      'dimensions': [0.7, 0.7, 2.0], 'color': [0.0, 0.0, 1.0, 0.1],
                      'duration': 0.4}
    with pytest.raises(ValueError):
        protocol.object_detected_payload([1, math.nan, 3])
