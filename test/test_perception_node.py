"""perception_node over real rclpy and Fast DDS, with a real (tiny) ONNX model.

A probe node publishes camera frames and listens to every output. The model is the fixed
colour model of perception_models.py, so the expected mask of a synthetic scene is known, and
the 'offline' mask is computed here with ONNX Runtime and OpenCV directly, not through the
node's code.
"""

import itertools
import math
from pathlib import Path
import uuid

from conftest import DATA, REPO, spin_until
import cv2
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from followme_common.image_msgs import fill_image, image_to_array, image_to_rgb
from followme_perception.detection import HeroDetection, IntrinsicsSource, RangeSource
from followme_perception.node import _tinted, FrameConverter, PARAMETERS, PerceptionNode
from followme_perception.overlay import JPEG_FORMAT, tint
from followme_perception.segmenter import DEFAULT_PROVIDERS, GpuSettings, ModelError
from geometry_msgs.msg import PoseStamped
import numpy as np
import onnxruntime as ort
from perception_models import colour_model, quantize_linear, scene
import pytest
import rclpy
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Float64MultiArray
from transport_helpers import compressed_depth_data
from visualization_msgs.msg import Marker
import yaml

NET_SIZE = (48, 64)    # the model's input (H, W); frames are 240x320, 5x larger
K = (200.0, 0.0, 160.0, 0.0, 200.0, 120.0, 0.0, 0.0, 1.0)
_stamps = itertools.count(1)


@pytest.fixture
def model_file(tmp_path):
    return colour_model(tmp_path / 'colour.onnx', size=NET_SIZE)


class Probe:
    """Publishes camera topics into a namespace and records every perception output."""

    def __init__(self, executor, namespace):
        self.node = rclpy.create_node(f'probe_{uuid.uuid4().hex[:8]}', namespace=namespace)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, 'image', qos)
        self.pub_depth = self.node.create_publisher(Image, 'depth', qos)
        self.pub_info = self.node.create_publisher(CameraInfo, 'camera_info', qos)
        self.received = {name: [] for name in
                         ('mask', 'mask_overlay', 'hero_pose', 'hero_detection', 'hero_marker')}
        self.diagnostics = []
        for name, msg_type in (('mask', Image), ('mask_overlay', Image),
                               ('hero_pose', PoseStamped), ('hero_detection', Float64MultiArray),
                               ('hero_marker', Marker)):
            self.node.create_subscription(msg_type, name, self.received[name].append, 50)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, 50)
        executor.add_node(self.node)
        self.executor = executor

    def connect(self, perception):
        """Wait until both sides have discovered each other (DDS discovery is asynchronous)."""
        pubs = (perception._pub_mask, perception._pub_overlay, perception._pub_detection)
        assert spin_until(self.executor, lambda: all(
            p.get_subscription_count() > 0 for p in pubs)
            and self.pub_image.get_subscription_count() > 0
            and self.pub_depth.get_subscription_count() > 0
            and self.pub_info.get_subscription_count() > 0)

    def send(self, image, depth=None, info=None):
        """Publish one frame (and its depth / camera info, same stamp); return the stamp."""
        sec = next(_stamps)
        for msg in (info, depth, image):
            if msg is not None:
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 500
                msg.header.frame_id = 'camera_optical'
        if info is not None:
            self.pub_info.publish(info)
        if depth is not None:
            self.pub_depth.publish(depth)
        self.pub_image.publish(image)
        return sec

    def detection_for(self, sec, timeout=10.0):
        """Spin until the detection summary of the frame stamped `sec` arrives; return it."""
        def found():
            return any(HeroDetection.from_list(m.data).stamp_sec == sec
                       for m in self.received['hero_detection'])
        assert spin_until(self.executor, found, timeout), f'no detection for frame {sec}'
        decoded = (HeroDetection.from_list(m.data) for m in self.received['hero_detection'])
        return next(d for d in decoded if d.stamp_sec == sec)

    def latest(self, topic, sec):
        """Return the message on `topic` stamped `sec`."""
        assert spin_until(self.executor, lambda: any(
            m.header.stamp.sec == sec for m in self.received[topic]))
        return next(m for m in self.received[topic] if m.header.stamp.sec == sec)


@pytest.fixture
def rig(executor, model_file):
    """Build a perception node and a probe in a fresh namespace, with extra parameters."""
    def make(**params):
        namespace = f'/test_{uuid.uuid4().hex[:8]}'
        overrides = [Parameter('model_path', value=str(model_file)),
                     Parameter('warmup_runs', value=1)]
        overrides += [Parameter(name, value=value) for name, value in params.items()]
        node = PerceptionNode(namespace=namespace, parameter_overrides=overrides)
        executor.add_node(node)
        probe = Probe(executor, namespace)
        probe.connect(node)
        return node, probe
    return make


def image_msg(rgb, encoding='rgb8', pad=0):
    """Build an Image in `encoding` from an RGB array, rows padded by `pad` bytes."""
    converted = {
        'rgb8': rgb, '8UC3': rgb, 'bgr8': rgb[:, :, ::-1],
        'rgba8': np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        'bgra8': np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
        'mono8': cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
        'yuv422_yuy2': cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2),
        'bayer_rggb8': _bayer_rggb(rgb),
    }[encoding]
    msg = fill_image(Image(), converted, encoding)
    if pad:
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        padded = np.concatenate([rows, np.full((msg.height, pad), 0xAB, np.uint8)], axis=1)
        msg.step += pad
        msg.data = padded.tobytes()
    return msg


def _bayer_rggb(rgb):
    mosaic = rgb[:, :, 1].copy()                  # green on the other two sites
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def depth_msg(metres, encoding='32FC1'):
    if encoding == '16UC1':
        millimetres = np.where(np.isfinite(metres), metres * 1000.0, 0.0)
        return fill_image(Image(), millimetres.astype(np.uint16), '16UC1')
    return fill_image(Image(), metres.astype(np.float32), '32FC1')


def camera_info(width=320, height=240, k=K, d=(), model='', p=(0.0,) * 12, binning=0,
                roi=(0, 0, 0, 0)):
    return CameraInfo(width=width, height=height, k=list(k), d=list(d), distortion_model=model,
                      p=list(p), binning_x=binning, binning_y=binning,
                      roi=RegionOfInterest(x_offset=roi[0], y_offset=roi[1], width=roi[2],
                                           height=roi[3]))


def offline_mask(model_path, rgb):
    """Compute the model's mask directly: OpenCV resize, classic scaling, ORT, argmax."""
    # The providers the node picks by default: each rounds its floats a little differently.
    providers = [p for p in DEFAULT_PROVIDERS if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(model_path), providers=providers)
    small = cv2.resize(rgb, NET_SIZE[::-1], interpolation=cv2.INTER_LINEAR)
    batch = (small.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0))[None]
    padding = session.get_inputs()[0].shape[3] - 3     # followme.input_pad_channels
    batch = np.concatenate([batch, np.zeros((*batch.shape[:3], padding), np.float32)], axis=3)
    if session.get_inputs()[0].type == 'tensor(uint8)':
        # An int8 model takes its input quantized, by ONNX Runtime's own QuantizeLinear here.
        scale, zero_point = session.get_modelmeta().custom_metadata_map[
            'followme.input_quantization'].split(',')
        batch = quantize_linear(batch, float(scale), int(zero_point))
    probs = session.run(None, {'image': batch})[0][0]
    ids = np.argmax(probs, axis=2).astype(np.uint8)
    return cv2.resize(ids, rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)


def sample_frames():
    """Return a synthetic scene, plus a real shared data frame when the data set is here."""
    images = sorted((DATA / 'train' / 'images').glob('*.jpeg'))[:1]
    frames = [scene()[0]]
    if images:
        frames.append(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB))
    return frames


@pytest.mark.parametrize('encoding,pad', [('rgb8', 0), ('bgr8', 0), ('rgba8', 0),
                                          ('bgra8', 0), ('mono8', 0), ('8UC3', 0),
                                          ('yuv422_yuy2', 0), ('bayer_rggb8', 0),
                                          ('rgb8', 5), ('bgra8', 12)])
def test_mask_equals_offline_model_for_every_encoding(rig, model_file, encoding, pad):
    node, probe = rig()
    for rgb in sample_frames():
        msg = image_msg(rgb, encoding, pad)
        sec = probe.send(msg)
        probe.detection_for(sec)
        mask = probe.latest('mask', sec)
        overlay = probe.latest('mask_overlay', sec)
        # Grey, 4:2:2 chroma and a Bayer mosaic lose some colour: the frame as converted.
        seen = image_to_rgb(msg) if encoding in ('mono8', 'yuv422_yuy2', 'bayer_rggb8') else rgb
        expected = offline_mask(model_file, seen)
        assert mask.encoding == 'mono8' and overlay.encoding == 'rgb8'
        assert (mask.height, mask.width) == rgb.shape[:2]
        np.testing.assert_array_equal(image_to_array(mask), expected)
        assert mask.header.frame_id == overlay.header.frame_id == 'camera_optical'
        assert overlay.header.stamp.nanosec == 500
        background = expected == 0
        np.testing.assert_array_equal(image_to_array(overlay)[background], seen[background])
        np.testing.assert_array_equal(image_to_array(overlay), tint(seen, expected, 0.5))
    assert node.error_counts() == {}


@pytest.mark.parametrize('quantization', [None, (2 / 255, 128)])
def test_a_model_with_a_padding_channel_gives_the_offline_mask(rig, tmp_path, quantization):
    """The int8 models' input: RGB, a channel the network ignores, quantized by a table."""
    padded = colour_model(tmp_path / 'padded.onnx', size=NET_SIZE, conv=True, pad_channels=1,
                          input_quantization=quantization)
    node, probe = rig(model_path=str(padded))
    assert node.segmenter.info.pad_channels == 1
    assert (node.segmenter.info.input_codes is None) == (quantization is None)
    for rgb in sample_frames():
        sec = probe.send(image_msg(rgb))
        probe.detection_for(sec)
        np.testing.assert_array_equal(image_to_array(probe.latest('mask', sec)),
                                      offline_mask(padded, rgb))
    assert node.error_counts() == {}


@pytest.mark.parametrize('encoding,pad,read_only,lands_in', [
    ('rgb8', 0, False, 'frame'), ('8UC3', 0, False, 'frame'), ('rgb8', 0, True, 'new'),
    ('rgb8', 5, False, 'converter'), ('bgr8', 0, False, 'converter'),
    ('mono8', 0, False, 'converter'), ('bgr8', 0, True, 'converter')])
def test_the_overlay_is_tinted_where_the_frame_already_lies(encoding, pad, read_only, lands_in):
    rgb, truth = scene()
    msg = image_msg(rgb, encoding, pad)
    msg.header.frame_id, msg.header.stamp.nanosec = 'camera_optical', 500
    if read_only:
        msg = _BagImage(msg)   # a bag's message: its data is immutable bytes
    converter = FrameConverter()
    pixels, frame = converter.convert(msg)
    np.testing.assert_array_equal(pixels, image_to_rgb(msg))
    expected = tint(pixels, truth, 0.5)
    overlay = _tinted(frame, pixels, truth, 0.5, msg.header)
    # No copy of the frame: the camera's own message, the converter's reused one, or (only
    # for read-only rgb8 data) a new one.
    if lands_in == 'new':
        assert frame is None and overlay is not msg and converter.message is None
    else:
        assert overlay is {'frame': msg, 'converter': converter.message}[lands_in]
    assert overlay.encoding == 'rgb8' and overlay.header.frame_id == 'camera_optical'
    assert overlay.header.stamp.nanosec == 500
    np.testing.assert_array_equal(image_to_array(overlay), expected)


def test_the_converter_reuses_its_message_and_resizes_it():
    converter = FrameConverter()
    small, large = scene()[0], np.zeros((60, 80, 3), np.uint8)
    _, first = converter.convert(image_msg(small, 'bgr8'))
    _, again = converter.convert(image_msg(small[:, :, ::-1].copy(), 'rgb8', 2))
    _, resized = converter.convert(image_msg(large, 'bgr8'))
    assert first is again and resized is not first
    assert (resized.height, resized.width) == (60, 80)


class _BagImage:
    """An Image as rosbags gives it: the same fields, `data` as bytes."""

    def __init__(self, msg):
        for name in ('header', 'height', 'width', 'encoding', 'is_bigendian', 'step'):
            setattr(self, name, getattr(msg, name))
        self.data = bytes(msg.data)


def test_hero_pose_from_depth_matches_synthetic_scene(rig):
    node, probe = rig()
    rgb, truth = scene()   # hero box x 140..180, y 60..200 (multiples of 5: exact at 5x)
    depth = np.full(truth.shape, 10.0, np.float32)
    depth[truth == 1] = 6.0
    depth[truth == 2] = 4.0
    depth[100:104, 150:170] = np.nan     # holes in the hero's depth are ignored
    depth[110:112, 150:170] = np.inf
    sec = probe.send(image_msg(rgb), depth_msg(depth), camera_info())
    detection = probe.detection_for(sec)
    pose = probe.latest('hero_pose', sec)
    ys, xs = np.nonzero(truth == 2)
    u, v = xs.mean(), ys.mean()
    # Tolerance: z exact (median of 4 m pixels); x, y within 1 cm (centroid within 0.5 px).
    assert detection.present == 1 and detection.range_source == RangeSource.DEPTH
    assert pose.pose.position.z == pytest.approx(4.0, abs=1e-6)
    assert pose.pose.position.x == pytest.approx((u - 160.0) / 200.0 * 4.0, abs=0.01)
    assert pose.pose.position.y == pytest.approx((v - 120.0) / 200.0 * 4.0, abs=0.01)
    assert (detection.x_min, detection.y_min, detection.x_max, detection.y_max) == (
        140, 60, 180, 200)
    assert detection.area_px == np.count_nonzero(truth == 2)
    assert detection.range_m == pytest.approx(math.dist((0, 0, 0), (
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z)))
    assert pose.header.frame_id == 'camera_optical' and pose.header.stamp.sec == sec
    assert probe.latest('hero_marker', sec).type == Marker.SPHERE

    # 16UC1 millimetres give the same answer.
    sec = probe.send(image_msg(rgb), depth_msg(depth, '16UC1'), camera_info())
    assert probe.detection_for(sec).range_source == RangeSource.DEPTH
    assert probe.latest('hero_pose', sec).pose.position.z == pytest.approx(4.0, abs=1e-3)


def test_range_from_size_then_bearing_only_then_lost(rig):
    node, probe = rig(person_height_m=1.4)
    rgb, _ = scene()
    sec = probe.send(image_msg(rgb), info=camera_info())
    detection = probe.detection_for(sec)
    assert detection.range_source == RangeSource.SIZE
    # 140 px tall at fy 200 px with a 1.4 m person: z = 200 * 1.4 / 140 = 2 m.
    assert probe.latest('hero_pose', sec).pose.position.z == pytest.approx(2.0, abs=1e-6)

    node2, probe2 = rig()   # a fresh node that has never seen camera_info
    assert node2._camera_model_text() == ('no CameraInfo yet: a 90 deg field of view assumed '
                                          '(assumed_hfov_deg)')
    sec = probe2.send(image_msg(rgb))
    detection = probe2.detection_for(sec)
    pose = probe2.latest('hero_pose', sec).pose.position
    assert detection.range_source == RangeSource.BEARING and math.isnan(detection.range_m)
    assert math.hypot(pose.x, pose.y, pose.z) == pytest.approx(1.0)
    assert probe2.latest('hero_marker', sec).type == Marker.ARROW

    no_hero, _ = scene(hero_box=None)
    sec = probe2.send(image_msg(no_hero))
    detection = probe2.detection_for(sec)
    assert detection.present == 0 and detection.range_source == RangeSource.NONE
    assert probe2.latest('hero_marker', sec).action == Marker.DELETE
    assert not any(m.header.stamp.sec == sec for m in probe2.received['hero_pose'])


PLUMB_BOB = (-0.32, 0.12, 0.0015, -0.002, -0.025)


def _send_until(probe, rgb, depth, info, done, attempts=10):
    """
    Send a frame until done(detection); return that detection and the hero's position.

    For a new CameraInfo: it comes on its own topic and may reach the node after the frame.
    """
    for _ in range(attempts):
        sec = probe.send(image_msg(rgb), depth_msg(depth), info)
        detection = probe.detection_for(sec)
        if done(detection):
            return detection, probe.latest('hero_pose', sec).pose.position
    raise AssertionError(f'no frame of {attempts} met the condition')


def _send_until_used(probe, source, rgb, depth, info):
    """Send a frame until the node reads it with the intrinsics `source`."""
    return _send_until(probe, rgb, depth, info, lambda d: d.intrinsics_source == source)


def test_lens_distortion_is_undone_and_a_rectified_image_uses_p(rig):
    node, probe = rig()
    rgb, truth = scene(hero_box=(230, 30, 270, 110))    # up and right, where the lens bends most
    depth = np.where(truth == 2, 4.0, 9.0).astype(np.float32)
    detection, position = _send_until_used(probe, IntrinsicsSource.CAMERA_INFO_UNDISTORTED, rgb,
                                           depth, camera_info(d=PLUMB_BOB, model='plumb_bob'))
    # Projected back through the lens (OpenCV's forward model), the pose lands on the centroid.
    pixel, _ = cv2.projectPoints(np.array([[position.x, position.y, position.z]]), np.zeros(3),
                                 np.zeros(3), np.array(K).reshape(3, 3), np.array(PLUMB_BOB))
    np.testing.assert_allclose(pixel.ravel(), (detection.cx, detection.cy), atol=1e-3)
    assert position.z == pytest.approx(4.0)
    assert position.x > (detection.cx - 160.0) / 200.0 * 4.0 + 0.1   # barrel: wider than pinhole

    # A model the node cannot undo: counted, and the pinhole K still gives bearings.
    _send_until_used(probe, IntrinsicsSource.CAMERA_INFO, rgb, depth,
                     camera_info(d=PLUMB_BOB, model='kb8'))
    assert node.error_counts()['camera_info_distortion_ignored'] >= 1
    # A D that cannot be undone where the hero is (barrel distortion turning back on itself
    # before the image's corner): a pinhole bearing for that frame, counted.
    corner, corner_truth = scene(hero_box=(0, 0, 30, 60))
    corner_depth = np.where(corner_truth == 2, 4.0, 9.0).astype(np.float32)
    detection, position = _send_until(
        probe, corner, corner_depth, camera_info(d=(-0.9, 0.0, 0.0, 0.0, 0.0), model='plumb_bob'),
        lambda _: node.error_counts()['distortion_not_invertible'] > 0)
    assert node.error_counts()['distortion_not_invertible'] >= 1
    assert detection.intrinsics_source == IntrinsicsSource.CAMERA_INFO
    assert position.x == pytest.approx((detection.cx - 160.0) / 200.0 * 4.0)
    # /diagnostics says which camera model the node reads.
    assert spin_until(probe.executor, lambda: any(
        _values(d).get('camera_model', '').startswith(
            'CameraInfo K, plumb_bob distortion undone: fx 200.0') for d in probe.diagnostics),
        timeout=5.0)

    # image_rectified: P's focal length and principal point, no distortion.
    node2, probe2 = rig(image_rectified=True)
    p = (250.0, 0.0, 150.0, 0.0, 0.0, 250.0, 110.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    detection, position = _send_until_used(probe2, IntrinsicsSource.CAMERA_INFO, rgb, depth,
                                           camera_info(d=PLUMB_BOB, model='plumb_bob', p=p))
    assert position.x == pytest.approx((detection.cx - 150.0) / 250.0 * 4.0)
    assert position.y == pytest.approx((detection.cy - 110.0) / 250.0 * 4.0)
    assert not node2.error_counts()
    assert node2._camera_model_text() == ('CameraInfo P (image_rectified), no distortion: '
                                          'fx 250.0, fy 250.0, cx 150.0, cy 110.0 for 320x240')


def test_a_cropped_and_binned_camera_info_describes_the_image(rig):
    """REP 104: K is the full sensor's; the 320x240 image is its 2x2-binned crop."""
    node, probe = rig()
    rgb, truth = scene()
    depth = np.where(truth == 2, 4.0, 9.0).astype(np.float32)
    # Sensor 800x600; crop (80, 60) 640x480; binned 2x2: K below is K of the image, scaled up.
    full_k = (400.0, 0.0, 400.0, 0.0, 400.0, 300.0, 0.0, 0.0, 1.0)
    info = camera_info(800, 600, full_k, binning=2, roi=(80, 60, 640, 480))
    detection, position = _send_until_used(probe, IntrinsicsSource.CAMERA_INFO, rgb, depth, info)
    assert position.x == pytest.approx((detection.cx - 160.0) / 200.0 * 4.0)
    assert position.y == pytest.approx((detection.cy - 120.0) / 200.0 * 4.0)


def _bad_images():
    rgb, _ = scene()
    good = image_msg(rgb)
    unknown = image_msg(rgb)
    unknown.encoding = 'yuv422_weird'
    short = image_msg(rgb)
    short.data = bytes(short.data)[:-7]
    zero = Image(encoding='rgb8', width=0, height=0, step=0)
    mono16 = fill_image(Image(), np.zeros((4, 4), np.uint16), '16UC1')
    return good, {'unknown_encoding': unknown, 'bad_data_size': short, 'zero_size': zero,
                  'not_a_colour_encoding': mono16}


def test_bad_images_are_counted_and_the_node_keeps_going(rig):
    node, probe = rig()
    good, bad = _bad_images()
    for kind, msg in bad.items():
        probe.send(msg)
        assert spin_until(probe.executor, lambda: node.error_counts()[kind] >= 1), kind
        sec = probe.send(image_msg(scene()[0]))
        assert probe.detection_for(sec).present == 1, f'node stopped after {kind}'
    assert set(node.error_counts()) == set(bad)

    # The counters reach /diagnostics, next to rates, timings and the providers.
    def reported():
        return any(all(f'errors.{kind}' in _values(d) for kind in bad)
                   for d in probe.diagnostics)
    assert spin_until(probe.executor, reported, timeout=5.0)
    values = _values(next(d for d in reversed(probe.diagnostics)
                          if 'errors.zero_size' in _values(d)))
    assert values['providers_active'] == ','.join(node.segmenter.providers)
    assert values['providers_active'].endswith('CPUExecutionProvider')
    assert int(values['frames_processed']) >= len(bad)
    for key in ('input_rate_hz', 'processed_rate_hz', 'frames_dropped', 'inference_ms'):
        assert float(values[key]) >= 0.0
    # Each stage but inference also in the worker's CPU time, which cannot exceed its wall time:
    # compared as medians, since on a VM one frame's CPU clock ran 50 us ahead of its wall clock.
    timings = node.frame_timings()
    for stage in ('convert', 'preprocess', 'postprocess', 'publish'):
        assert float(values[f'{stage}_cpu_ms']) >= 0.0
        assert min(timings[f'{stage}_cpu']) >= 0.0
        assert np.median(timings[f'{stage}_cpu']) <= np.median(timings[stage]) + 0.05
    reported_frames = int(values['frames_processed'])
    window = [sum(row) for row in zip(*(timings[f'{stage}_cpu'] for stage in
                                        ('convert', 'preprocess', 'postprocess', 'publish')))]
    if len(window) == reported_frames:  # no frame finished after that report
        assert float(values['beyond_infer_cpu_mean_ms']) == pytest.approx(np.mean(window),
                                                                          abs=0.006)
    assert float(values['beyond_infer_cpu_mean_ms']) > 0.0


def test_an_image_without_frame_id_is_served_and_counted(rig):
    node, probe = rig()
    msg = image_msg(scene()[0])
    msg.header.stamp.sec = sec = next(_stamps)     # frame_id left empty, as some drivers do
    probe.pub_image.publish(msg)
    detection = probe.detection_for(sec)
    assert detection.present == 1
    assert probe.latest('hero_pose', sec).header.frame_id == ''   # copied, not invented
    assert node.error_counts() == {'empty_frame_id': 1}


def test_bad_depth_and_camera_info_fall_back_and_are_counted(rig):
    node, probe = rig()
    rgb, truth = scene()
    cases = {
        'depth_no_valid_pixels': (depth_msg(np.where(truth == 2, np.nan, 5.0)), camera_info()),
        'depth_size_mismatch': (depth_msg(np.full((120, 160), 4.0)), camera_info()),
        'depth_bad_image': (image_msg(rgb), camera_info()),   # colour sent as depth
        'camera_info_invalid': (None, camera_info(k=[0.0] * 9)),
    }
    for kind, (depth, info) in cases.items():
        sec = probe.send(image_msg(rgb), depth, info)
        detection = probe.detection_for(sec)
        assert spin_until(probe.executor, lambda: node.error_counts()[kind] >= 1), kind
        assert detection.present == 1
        assert detection.range_source in (RangeSource.SIZE, RangeSource.BEARING)
    # Inf in the depth comes back as no reading as well: a blob of inf falls back too.
    sec = probe.send(image_msg(rgb), depth_msg(np.where(truth == 2, np.inf, 5.0)),
                     camera_info())
    assert probe.detection_for(sec).range_source == RangeSource.SIZE
    assert node.error_counts()['depth_no_valid_pixels'] >= 2


def test_stale_depth_is_not_used(rig):
    node, probe = rig(depth_sync_tolerance=0.05)
    rgb, truth = scene()
    depth = depth_msg(np.where(truth == 2, 3.0, 8.0))
    probe.send(image_msg(rgb), depth, camera_info())   # depth stamped with frame n
    sec = probe.send(image_msg(rgb))                    # frame n + 1 s: that depth is stale
    assert probe.detection_for(sec).range_source == RangeSource.SIZE
    assert node.error_counts()['depth_stale'] >= 1


def test_a_burst_is_dropped_not_queued_and_the_newest_frame_wins(rig):
    node, probe = rig()
    frames = [image_msg(scene()[0]) for _ in range(30)]
    stamps = [probe.send(msg) for msg in frames]
    probe.detection_for(stamps[-1])
    counts = node.frame_counts()
    assert spin_until(probe.executor, lambda: node.frame_counts()['images'] == len(frames)
                      or node.frame_counts()['processed'] + node.frame_counts()['dropped']
                      == node.frame_counts()['images'])
    counts = node.frame_counts()
    # Every received frame was either processed or dropped: nothing waits in a queue.
    assert counts['processed'] + counts['dropped'] == counts['images']
    done = [HeroDetection.from_list(m.data).stamp_sec for m in probe.received['hero_detection']]
    assert done == sorted(done) and done[-1] == stamps[-1]


def test_compressed_overlay_for_remote_rviz_alone_or_beside_the_raw_one(rig, model_file):
    node, probe = rig()
    received = []
    probe.node.create_subscription(CompressedImage, 'mask_overlay/compressed', received.append,
                                   10)
    assert spin_until(probe.executor, lambda: node._pub_overlay_jpeg.get_subscription_count())

    def compressed_for(sec):
        assert spin_until(probe.executor, lambda: any(
            m.header.stamp.sec == sec for m in received))
        return next(m for m in received if m.header.stamp.sec == sec)

    def check(msg, rgb):
        assert msg.format == JPEG_FORMAT and msg.header.frame_id == 'camera_optical'
        assert msg.header.stamp.nanosec == 500
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(msg.data, np.uint8),
                                            cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        expected = tint(rgb, offline_mask(model_file, rgb), 0.5)
        assert decoded.shape == expected.shape
        assert np.abs(decoded.astype(int) - expected).mean() < 3.0
        return len(msg.data)

    rgb = scene()[0]
    for encoding in ('rgb8', 'bgr8'):   # the frame tinted in place, and a copy
        sec = probe.send(image_msg(rgb, encoding))
        check(compressed_for(sec), rgb)
        assert probe.latest('mask_overlay', sec).encoding == 'rgb8'
    default_size = check(compressed_for(sec), rgb)
    # The quality applies to the next frame.
    assert node.set_parameters([Parameter('overlay_jpeg_quality', value=10)])[0].successful
    sec = probe.send(image_msg(rgb))
    assert len(compressed_for(sec).data) < default_size
    # rviz on another machine, nobody on the raw overlay: only the compressed one is made.
    node.set_parameters([Parameter('overlay_jpeg_quality', value=95)])
    for subscription in list(probe.node.subscriptions):
        if subscription.topic_name.endswith('/mask_overlay'):
            probe.node.destroy_subscription(subscription)
    assert spin_until(probe.executor, lambda: node._pub_overlay.get_subscription_count() == 0)
    sec = probe.send(image_msg(rgb))
    check(compressed_for(sec), rgb)
    probe.detection_for(sec)
    assert all(m.header.stamp.sec != sec for m in probe.received['mask_overlay'])
    assert node.error_counts() == {}


def compressed_rig(executor, model_file, topic, cli_args=(), **params):
    """Start a perception node with compressed input; return it, a probe and a publisher."""
    namespace = f'/test_{uuid.uuid4().hex[:8]}'
    node = PerceptionNode(
        namespace=namespace, cli_args=['--ros-args', *cli_args],
        parameter_overrides=[Parameter('model_path', value=str(model_file)),
                             Parameter('warmup_runs', value=0)]
        + [Parameter(name, value=value) for name, value in params.items()])
    executor.add_node(node)
    probe = Probe(executor, namespace)
    pub = probe.node.create_publisher(CompressedImage, topic,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0
                      and node._pub_mask.get_subscription_count() > 0
                      and node._pub_detection.get_subscription_count() > 0)
    return node, probe, pub


def test_compressed_camera_frames_with_image_transport_compressed(executor, model_file):
    # Where image_transport puts it: under the (remapped) image topic.
    node, probe, pub = compressed_rig(executor, model_file, 'camera/compressed',
                                      ('-r', 'image:=camera'), image_transport='compressed')

    def send(data, fmt):
        msg = CompressedImage(format=fmt)
        msg.data.frombytes(data)
        msg.header.stamp.sec, msg.header.stamp.nanosec = next(_stamps), 500
        msg.header.frame_id = 'camera_optical'
        pub.publish(msg)
        return msg.header.stamp.sec

    for rgb in sample_frames():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        # PNG is lossless: the mask must be the offline model's, pixel for pixel.
        sec = send(cv2.imencode('.png', bgr)[1].tobytes(), 'bgr8; png compressed bgr8')
        probe.detection_for(sec)
        np.testing.assert_array_equal(image_to_array(probe.latest('mask', sec)),
                                      offline_mask(model_file, rgb))
        overlay = probe.latest('mask_overlay', sec)
        assert overlay.header.frame_id == 'camera_optical' and overlay.encoding == 'rgb8'
        np.testing.assert_array_equal(image_to_array(overlay),
                                      tint(rgb, offline_mask(model_file, rgb), 0.5))
        # JPEG, as compressed_image_transport sends an rgb8 camera: the decoded frame's mask.
        jpeg = cv2.imencode('.jpg', bgr)[1]
        seen = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        sec = send(jpeg.tobytes(), 'rgb8; jpeg compressed bgr8')
        probe.detection_for(sec)
        np.testing.assert_array_equal(image_to_array(probe.latest('mask', sec)),
                                      offline_mask(model_file, seen))
    assert node.error_counts() == {}
    # Not a picture, nothing, and depth: each counted, and the next good frame is served.
    bad = ((b'\xff\xd8 not a jpeg', 'rgb8; jpeg compressed bgr8'), (b'', 'jpeg'),
           (cv2.imencode('.png', bgr)[1].tobytes(), '16UC1; compressedDepth png'))
    for count, (data, fmt) in enumerate(bad, start=1):
        send(data, fmt)
        assert spin_until(executor, lambda: node.error_counts()['bad_compressed_image'] == count)
    sec = send(cv2.imencode('.png', bgr)[1].tobytes(), 'png')
    probe.detection_for(sec)
    assert node.error_counts() == {'bad_compressed_image': 3}


def _send_compressed_depth_then_frame(executor, node, probe, pub, fmt, data, rgb):
    """Publish a compressedDepth image and a frame with its stamp; return the detection."""
    depth = CompressedImage(format=fmt)
    depth.data.frombytes(data)
    sec = next(_stamps)
    depth.header.stamp.sec, depth.header.stamp.nanosec = sec, 500
    depth_count = node.frame_counts()['depth_images']
    pub.publish(depth)
    assert spin_until(executor, lambda: node.frame_counts()['depth_images'] == depth_count + 1)
    image = image_msg(rgb)
    image.header.stamp.sec, image.header.stamp.nanosec = sec, 500
    image.header.frame_id = 'camera_optical'
    probe.pub_image.publish(image)
    return sec, probe.detection_for(sec)


@pytest.mark.parametrize('codec', ['png', 'rvl'])
@pytest.mark.parametrize('encoding,tolerance', [('16UC1', 0.0), ('32FC1', 0.01)])
def test_hero_pose_from_compressed_depth(executor, model_file, encoding, tolerance, codec):
    node, probe, pub = compressed_rig(executor, model_file, 'depth/compressedDepth',
                                      depth_transport='compressedDepth')
    assert spin_until(executor, lambda: probe.pub_image.get_subscription_count() > 0)
    rgb, truth = scene()
    metres = np.where(truth == 2, 4.0, np.where(truth == 1, 6.0, 9.0)).astype(np.float32)
    metres[100:104, 150:170] = np.nan                     # holes in the hero are skipped
    fmt, data = compressed_depth_data(metres, encoding, codec)
    sec, detection = _send_compressed_depth_then_frame(executor, node, probe, pub, fmt, data,
                                                       rgb)
    assert detection.range_source == RangeSource.DEPTH
    assert probe.latest('hero_pose', sec).pose.position.z == pytest.approx(4.0, abs=tolerance)
    assert node.error_counts() == {}


def test_corrupt_compressed_depth_is_counted_and_the_next_good_one_used(executor, model_file):
    node, probe, pub = compressed_rig(executor, model_file, 'depth/compressedDepth',
                                      depth_transport='compressedDepth')
    assert spin_until(executor, lambda: probe.pub_image.get_subscription_count() > 0)
    rgb, truth = scene()
    metres = np.where(truth == 2, 4.0, 9.0).astype(np.float32)
    fmt, data = compressed_depth_data(metres, '16UC1', 'rvl')
    corrupt = [(fmt, data[:len(data) // 2]),                       # cut off in transit
               (fmt, data[:12] + b'\xff' * 8 + data[20:]),         # a size beyond any frame
               (fmt.replace('rvl', 'jxl'), data)]                  # a codec nobody reads
    for count, (bad_format, bad_data) in enumerate(corrupt, start=1):
        _, detection = _send_compressed_depth_then_frame(executor, node, probe, pub, bad_format,
                                                         bad_data, rgb)
        # No depth: the range comes from the blob's size instead (no CameraInfo: bearing).
        assert detection.present and detection.range_source != RangeSource.DEPTH
        assert node.error_counts() == {'depth_bad_image': count}
    _, detection = _send_compressed_depth_then_frame(executor, node, probe, pub, fmt, data, rgb)
    assert detection.range_source == RangeSource.DEPTH
    assert detection.range_m == pytest.approx(4.0, rel=0.05)


def test_compressed_overlay_follows_a_remap_of_the_overlay(executor, model_file):
    namespace = f'/test_{uuid.uuid4().hex[:8]}'
    node = PerceptionNode(
        namespace=namespace, cli_args=['--ros-args', '-r', 'mask_overlay:=viz/overlay'],
        parameter_overrides=[Parameter('model_path', value=str(model_file)),
                             Parameter('warmup_runs', value=0)])
    executor.add_node(node)  # destroyed with the executor
    assert node._pub_overlay.topic_name == f'{namespace}/viz/overlay'
    assert node._pub_overlay_jpeg.topic_name == f'{namespace}/viz/overlay/compressed'


def test_overlay_max_rate_thins_the_overlay_only_and_applies_while_running(rig):
    # One overlay per 1000 s: of frames sent one after another, only the first gets one.
    node, probe = rig(overlay_max_rate=0.001)
    stamps = []
    for _ in range(4):
        stamps.append(probe.send(image_msg(scene()[0])))
        probe.detection_for(stamps[-1])
        probe.latest('mask', stamps[-1])
    spin_until(probe.executor, lambda: False, timeout=0.3)  # let a stray overlay arrive
    assert [m.header.stamp.sec for m in probe.received['mask_overlay']] == stamps[:1]
    node.set_parameters([Parameter('overlay_max_rate', value=0.0)])  # every frame again
    sec = probe.send(image_msg(scene()[0]))
    assert probe.latest('mask_overlay', sec).header.stamp.sec == sec
    assert node.error_counts() == {}


def test_startup_fails_clearly_on_missing_corrupt_or_misfit_model(executor, tmp_path):
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'not a model')
    nchw = colour_model(tmp_path / 'nchw.onnx', size=NET_SIZE, channels_first=True)
    no_meta = colour_model(tmp_path / 'bare.onnx', metadata={})
    for path, words in ((tmp_path / 'missing.onnx', 'not found'), (corrupt, 'cannot load'),
                        (nchw, 'NHWC'), (no_meta, 'metadata')):
        with pytest.raises(ModelError, match=words) as error:
            PerceptionNode(namespace='/startup',
                           parameter_overrides=[Parameter('model_path', value=str(path))])
        assert 'model_path' in str(error.value)


def test_bad_parameters_are_refused_with_a_reason(executor, model_file):
    for name, value, words in (('qos_reliability', 'sometimes', 'best_effort'),
                               ('image_transport', 'theora', 'compressed'),
                               ('depth_transport', 'zstd', 'compressedDepth'),
                               ('providers', ['WarpDriveExecutionProvider'], 'unknown'),
                               ('person_height_m', 12.0, 'person_height_m')):
        with pytest.raises(InvalidParameterValueException, match=words):
            PerceptionNode(namespace='/params', parameter_overrides=[
                Parameter('model_path', value=str(model_file)), Parameter(name, value=value)])
    node = PerceptionNode(namespace='/params', parameter_overrides=[
        Parameter('model_path', value=str(model_file)),
        Parameter('qos_reliability', value='reliable')])
    executor.add_node(node)
    assert not node.set_parameters([Parameter('min_hero_pixels', value=0)])[0].successful
    assert node.set_parameters([Parameter('min_hero_pixels', value=500)])[0].successful
    assert node.locator.min_pixels == 500


@pytest.mark.skipif('CUDAExecutionProvider' not in ort.get_available_providers()
                    or Path('/dev/nvidia0').exists(),
                    reason='needs the onnxruntime-gpu build (`make gpu`) on a machine without '
                           'a GPU: the silent fallback this checks')
def test_the_gpu_build_without_a_gpu_warns_that_it_fell_back(rig):
    node, probe = rig()
    assert node.segmenter.fell_back()

    def warned():
        return any(status.level == DiagnosticStatus.WARN and 'fell back' in status.message
                   for array in probe.diagnostics for status in array.status)
    assert spin_until(probe.executor, warned, timeout=5.0)
    values = _values(probe.diagnostics[-1])
    assert values['providers_active'] == 'CPUExecutionProvider'
    assert values['providers_requested'].startswith('TensorrtExecutionProvider')
    # Why, for whoever reads /diagnostics rather than the log: the CUDA libraries missing.
    assert 'Failed to load libcublas' in values['cuda_libraries']


def test_tensorrt_settings_reach_the_session(executor, model_file, tmp_path, monkeypatch):
    monkeypatch.setenv('ROS_HOME', str(tmp_path / 'ros_home'))
    default = PerceptionNode(namespace='/trt_default', parameter_overrides=[
        Parameter('model_path', value=str(model_file)), Parameter('warmup_runs', value=0)])
    executor.add_node(default)
    assert default._gpu_settings() == GpuSettings(
        0, str(tmp_path / 'ros_home' / 'followme' / 'tensorrt'), False)
    monkeypatch.setenv('HOME', str(tmp_path))     # '~' in a path parameter is the home folder
    chosen = PerceptionNode(namespace='/trt_chosen', parameter_overrides=[
        Parameter('model_path', value=f'~/{model_file.relative_to(tmp_path)}'),
        Parameter('warmup_runs', value=0), Parameter('tensorrt_cache_dir', value='~/engines'),
        Parameter('tensorrt_fp16', value=True), Parameter('gpu_device_id', value=1)])
    executor.add_node(chosen)
    assert chosen._gpu_settings() == GpuSettings(1, str(tmp_path / 'engines'), True)
    if 'TensorrtExecutionProvider' in ort.get_available_providers():    # `make gpu`
        assert chosen.segmenter.tensorrt_cache.parent == tmp_path / 'engines'
    else:
        assert chosen.segmenter.tensorrt_cache is None
    off = PerceptionNode(namespace='/trt_off', parameter_overrides=[
        Parameter('model_path', value=str(model_file)), Parameter('warmup_runs', value=0),
        Parameter('tensorrt_engine_cache', value=False)])
    executor.add_node(off)
    assert off._gpu_settings().tensorrt_cache_dir == ''


def test_the_config_file_section_matches_the_declared_parameters(executor, model_file):
    config = yaml.safe_load((REPO / 'config' / 'followme.yaml').read_text())
    values = config['/**/perception_node']['ros__parameters']
    assert set(values) == set(PARAMETERS)
    assert values == {name: default for name, (default, _) in PARAMETERS.items()}
    values.update(model_path=str(model_file), flip_average=True, warmup_runs=0)
    node = PerceptionNode(namespace='/config', parameter_overrides=[
        Parameter(name, value=value) for name, value in values.items()])
    executor.add_node(node)
    assert node.segmenter.flip_average


def _values(diagnostic_array):
    return {kv.key: kv.value for status in diagnostic_array.status for kv in status.values}
