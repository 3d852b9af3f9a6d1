"""
perception_node: camera frames in; class mask, overlay, hero pose and detection summary out.

The thin ROS shell around followme_perception's core. The image callback only keeps the newest
frame; a worker thread processes whatever is newest when it is free, so a slow machine drops
frames (counted) instead of building a backlog of stale ones.
"""

from collections import Counter, deque
import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common import node_cli, paths
from followme_common.image_msgs import (COLOUR_ENCODINGS, compressed_to_rgb, DepthMetres,
                                        ENCODINGS, fill_image, image_to_array, image_to_rgb,
                                        ImageConversionError)
from followme_common.memory import keep_large_buffers
from followme_common.node_params import float_param as _float, int_param as _int
from followme_common.rate_limit import RateLimiter
from followme_perception.detection import FIELDS, IntrinsicsSource, LAYOUT_LABEL, RangeSource
from followme_perception.hero import camera_info_region, HeroLocator, Intrinsics
from followme_perception.overlay import encode_jpeg, JPEG_FORMAT, tint
from followme_perception.segmenter import (DEFAULT_PROVIDERS, GpuSettings, HERO, ModelError,
                                           Segmenter)
from geometry_msgs.msg import Point, PoseStamped
import numpy as np
import onnxruntime as ort
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from visualization_msgs.msg import Marker

RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}
# image_transport's names: the camera frames as Image on `image`, or as CompressedImage on
# `<image>/compressed` (what most camera bags hold).
TRANSPORTS = {'raw': (Image, ''), 'compressed': (CompressedImage, '/compressed')}
# The same for depth: compressed_depth_image_transport's PNG or RVL on `<depth>/compressedDepth`.
DEPTH_TRANSPORTS = {'raw': (Image, ''), 'compressedDepth': (CompressedImage, '/compressedDepth')}
# The string parameters with a fixed set of values.
CHOICES = {'qos_reliability': RELIABILITY, 'image_transport': TRANSPORTS,
           'depth_transport': DEPTH_TRANSPORTS}
THROTTLE_S = 5.0
STAGES = ('convert', 'preprocess', 'infer', 'postprocess', 'publish')
# The worker thread's own CPU time per stage, beside the wall time: on a machine shared with
# the camera driver and rviz, a stage's wall time also holds the time they ran instead of us.
# Inference is left out: ONNX Runtime's own threads do most of its work.
CPU_STAGES = tuple(stage for stage in STAGES if stage != 'infer')
TIMING_WINDOW = 100  # frames behind the medians in diagnostics


def _text(description):
    return ParameterDescriptor(description=description, read_only=True)


# name: (default, descriptor). Start-up settings are read-only; the rest apply to the next frame.
PARAMETERS = {
    'model_path': ('', _text(
        "ONNX model file; empty means the package's shipped int8 models/followme_fcn_int8.onnx "
        '(the float models/followme_fcn.onnx is the one for GPU providers)')),
    'providers': (list(DEFAULT_PROVIDERS), _text(
        'ONNX Runtime execution providers in order of preference; ones this build lacks are '
        'skipped, and the ones really used are logged and reported in diagnostics')),
    'intra_op_threads': (0, _int("ONNX Runtime threads inside one operator, and OpenVINO's "
                                 'threads when it runs the model (0: their default)',
                                 0, 256, read_only=True)),
    'inter_op_threads': (0, _int('ONNX Runtime threads across operators (0: its default)',
                                 0, 256, read_only=True)),
    'gpu_device_id': (0, _int('CUDA device the CUDA and TensorRT providers run on', 0, 64,
                              read_only=True)),
    'tensorrt_engine_cache': (True, _text(
        'keep the engines TensorRT builds on disk, so that only the first start with a model '
        'builds them (tens of seconds or more before the first frame)')),
    'tensorrt_cache_dir': ('', _text(
        "where TensorRT's engines are kept, one folder per model file content and precision; "
        'empty means $ROS_HOME/followme/tensorrt (~/.ros/followme/tensorrt)')),
    'tensorrt_fp16': (False, _text(
        'let TensorRT run layers in half precision: about twice as fast on tensor cores, at a '
        'precision not measured by this project')),
    'warmup_runs': (3, _int('inferences on a blank frame at start-up', 0, 100, read_only=True)),
    'flip_average': (False, _text(
        'average the network output on each frame and on its mirror image (test-time flip): '
        'fewer false heroes, fewer far-away ones found, twice the inference time')),
    'image_transport': ('raw', _text(
        "how camera frames arrive: 'raw' (sensor_msgs/Image on image) or 'compressed' "
        '(sensor_msgs/CompressedImage, JPEG or PNG, on image/compressed, as image_transport '
        'names it)')),
    'depth_transport': ('raw', _text(
        "how depth arrives: 'raw' (sensor_msgs/Image on depth) or 'compressedDepth' "
        '(sensor_msgs/CompressedImage, PNG or RVL, on depth/compressedDepth, as image_transport '
        'names it)')),
    'qos_reliability': ('best_effort', _text(
        "camera subscriptions' reliability: best_effort or reliable")),
    'qos_depth': (1, _int("camera subscriptions' history depth (keep last N)", 1, 100,
                          read_only=True)),
    'min_hero_pixels': (30, _int('smallest hero blob, in input pixels, taken as the hero',
                                 1, 10_000_000)),
    'person_height_m': (1.75, _float('assumed hero height for range from blob size (m)',
                                     0.3, 3.0)),
    'assumed_hfov_deg': (90.0, _float(
        'horizontal field of view assumed for bearings until CameraInfo arrives (deg)',
        10.0, 170.0)),
    'image_rectified': (False, _text(
        "true when image is rectified (image_proc's image_rect): bearings then use "
        "CameraInfo's P and no distortion; false (a driver's image_raw): K, with the lens "
        'distortion D undone (plumb_bob, rational_polynomial, equidistant)')),
    'depth_sync_tolerance': (0.1, _float(
        'largest |depth stamp - image stamp| for the depth to be used (s); 0 takes the newest '
        'depth whatever its stamp', 0.0, 10.0)),
    'overlay_alpha': (0.5, _float('tint strength in mask_overlay (0 none, 1 solid)', 0.0, 1.0)),
    'overlay_max_rate': (0.0, _float(
        'most mask_overlay images a second (Hz, node clock); 0 sends one with every frame. '
        'The overlay is for eyes in rviz: at 640x480 it is 0.9 MB per frame, the costliest '
        'output to publish (docs/perception.md)', 0.0, 1000.0)),
    'overlay_jpeg_quality': (80, _int(
        'JPEG quality of mask_overlay/compressed (1-100), the overlay for rviz on another '
        'machine (its "compressed" transport): 12-55 kB per 640x480 frame of the data set at '
        '80, instead of 900 kB', 1, 100)),
    'diagnostics_period': (1.0, _float('seconds between /diagnostics reports', 0.1, 60.0,
                                       read_only=True)),
}


class PerceptionNode(Node):
    """Segments each newest camera frame and publishes the mask, overlay and hero estimate."""

    def __init__(self, **kwargs):
        super().__init__('perception_node', **kwargs)
        # Frame-sized temporaries without page faults (see followme_common/memory.py).
        if not keep_large_buffers():
            self.get_logger().info('malloc tuning unavailable (not glibc): frames cost more')
        self._lock = threading.Lock()  # guards the newest frame/depth/intrinsics and counters
        self.add_on_set_parameters_callback(self._check_parameters)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.locator = HeroLocator()
        self._image_rectified = self.get_parameter('image_rectified').value
        self._overlay_limiter = RateLimiter()
        self._apply_parameters([])

        model_path = os.path.expanduser(self.get_parameter('model_path').value
                                        or str(paths.default_model_file()))
        self.segmenter = Segmenter(
            model_path, self.get_parameter('providers').value,
            self.get_parameter('intra_op_threads').value,
            self.get_parameter('inter_op_threads').value,
            self.get_parameter('warmup_runs').value,
            self.get_parameter('flip_average').value, self._gpu_settings())
        info = self.segmenter.info
        self.get_logger().info(
            f'model {info.path} (input {info.height}x{info.width}, classes '
            f'{",".join(info.classes)}), providers: {", ".join(self.segmenter.providers)}')
        if self.segmenter.fell_back():
            self.get_logger().warn(
                f'ONNX Runtime fell back to {self.segmenter.providers[0]} although '
                f'{self.segmenter.preferred_provider} was asked for and this build has it '
                '(no GPU, driver or library? ONNX Runtime logged why above'
                + (f'; loading CUDA said: {self.segmenter.gpu_library_report}'
                   if self.segmenter.gpu_library_report else '') + ')')
        if self.segmenter.providers[0] == 'TensorrtExecutionProvider':
            self.get_logger().info(
                f'TensorRT engines cached in {self.segmenter.tensorrt_cache}'
                if self.segmenter.tensorrt_cache else
                'TensorRT engine cache off: every start builds the engines anew')

        self._frame = None          # newest unprocessed (Image, arrival monotonic time)
        self._depth = None          # newest depth Image
        self._camera_info = None    # newest (Intrinsics, width, height)
        self._errors = Counter()
        self._reported_errors = Counter()
        self._counts = Counter()    # images, processed, dropped
        # Per frame: ms waiting for the worker, ms per stage (STAGES), CPU ms (CPU_STAGES).
        self._timings = deque(maxlen=TIMING_WINDOW)
        self._marker_shown = False
        self._mask = None           # the mask Image, reused from frame to frame
        self._converter = FrameConverter()
        self._last_report = (time.monotonic(), Counter())

        self._pub_mask = self.create_publisher(Image, 'mask', 1)
        self._pub_overlay = self.create_publisher(Image, 'mask_overlay', 1)
        # image_transport's naming, so rviz's "compressed" transport hint finds it: under the
        # raw overlay's resolved name, which a remap of mask_overlay carries along.
        self._pub_overlay_jpeg = self.create_publisher(
            CompressedImage, f'{self._pub_overlay.topic_name}/compressed', 1)
        self._pub_pose = self.create_publisher(PoseStamped, 'hero_pose', 10)
        self._pub_detection = self.create_publisher(Float64MultiArray, 'hero_detection', 10)
        self._pub_marker = self.create_publisher(Marker, 'hero_marker', 10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST,
                         depth=self.get_parameter('qos_depth').value,
                         reliability=RELIABILITY[self.get_parameter('qos_reliability').value])
        image_type, suffix = TRANSPORTS[self.get_parameter('image_transport').value]
        self.create_subscription(image_type, self.resolve_topic_name('image') + suffix,
                                 self._on_image, qos)
        depth_type, suffix = DEPTH_TRANSPORTS[self.get_parameter('depth_transport').value]
        self.create_subscription(depth_type, self.resolve_topic_name('depth') + suffix,
                                 self._on_depth, qos)
        self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos)
        self.create_timer(self.get_parameter('diagnostics_period').value,
                          self._publish_diagnostics)

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='perception_worker', daemon=True)
        self._worker.start()

    # Parameters -------------------------------------------------------------------------

    def _gpu_settings(self):
        cache_dir = ''
        if self.get_parameter('tensorrt_engine_cache').value:
            cache_dir = os.path.expanduser(self.get_parameter('tensorrt_cache_dir').value
                                           or str(paths.default_tensorrt_cache_dir()))
        return GpuSettings(self.get_parameter('gpu_device_id').value, cache_dir,
                           self.get_parameter('tensorrt_fp16').value)

    def _check_parameters(self, params):
        for param in params:
            choices = CHOICES.get(param.name)
            if choices is not None and param.value not in choices:
                return SetParametersResult(
                    successful=False,
                    reason=f"{param.name} must be one of {', '.join(choices)}, not "
                           f"'{param.value}'")
            if param.name == 'providers':
                unknown = [p for p in param.value if p not in ort.get_all_providers()]
                if unknown or not param.value:
                    return SetParametersResult(
                        successful=False,
                        reason=f'providers must be a non-empty list of ONNX Runtime providers '
                               f'({", ".join(ort.get_all_providers())}); unknown: {unknown}')
        return SetParametersResult(successful=True)

    def _apply_parameters(self, _params):
        with self._lock:
            self.locator.min_pixels = self.get_parameter('min_hero_pixels').value
            self.locator.person_height_m = self.get_parameter('person_height_m').value
            self.locator.assumed_hfov_deg = self.get_parameter('assumed_hfov_deg').value
            self._depth_tolerance = self.get_parameter('depth_sync_tolerance').value
            self._overlay_alpha = self.get_parameter('overlay_alpha').value
            self._jpeg_quality = self.get_parameter('overlay_jpeg_quality').value
            overlay_rate = self.get_parameter('overlay_max_rate').value
            if overlay_rate != self._overlay_limiter.max_rate_hz:
                self._overlay_limiter.max_rate_hz = overlay_rate

    # Inputs: keep only the newest ---------------------------------------------------------

    def _on_image(self, msg):
        with self._lock:
            self._counts['images'] += 1
            if self._frame is not None:
                self._counts['dropped'] += 1
            self._frame = (msg, time.monotonic())
        self._wake.set()

    def _on_depth(self, msg):
        with self._lock:
            self._counts['depth_images'] += 1
            self._depth = msg

    def _on_camera_info(self, msg):
        intrinsics, problem = Intrinsics.from_camera_info(msg.k, msg.d, msg.distortion_model,
                                                          msg.p, self._image_rectified)
        if intrinsics is None:
            self._bad_input('camera_info_invalid',
                            f'camera_info has no usable K matrix ({list(msg.k)}); bearings use '
                            'the assumed field of view')
            return
        if problem:
            self._bad_input('camera_info_distortion_ignored',
                            f'camera_info: {problem}; bearings ignore lens distortion. Rectify '
                            'the image (image_proc) and set image_rectified true')
        roi = msg.roi
        x_offset, y_offset, binning_x, binning_y, width, height = camera_info_region(
            msg.width, msg.height, msg.binning_x, msg.binning_y,
            (roi.x_offset, roi.y_offset, roi.width, roi.height))
        intrinsics = intrinsics.in_region(x_offset, y_offset, binning_x, binning_y)
        with self._lock:
            self._camera_info = (intrinsics, width, height)

    def _bad_input(self, kind, text):
        with self._lock:
            self._errors[kind] += 1
        self.get_logger().warn(f'{text} [{kind}]', throttle_duration_sec=THROTTLE_S)

    # The worker ---------------------------------------------------------------------------

    def _work(self):
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.2):
                continue
            with self._lock:
                frame, self._frame = self._frame, None
                self._wake.clear()
            if frame is None:
                continue
            try:
                self._process(*frame)
            except Exception as error:  # keep serving frames whatever happens
                self._bad_input('internal_error', f'processing a frame failed: {error!r}')

    def _process(self, msg, arrived):
        started, cpu_started = time.monotonic(), time.thread_time()
        try:
            rgb, frame = self._converter.convert(msg)
        except ImageConversionError as error:
            self._bad_input(_image_error_kind(msg), f'image dropped: {error}')
            return
        if not msg.header.frame_id:
            self._bad_input('empty_frame_id', "the image's header has no frame_id, and every "
                            'output copies it: rviz and tf cannot place hero_pose or the marker. '
                            "Set the camera driver's frame_id (its optical frame, REP 103)")
        t_convert, cpu_convert = time.monotonic(), time.thread_time()
        batch = self.segmenter.preprocess(rgb)
        t_pre, cpu_pre = time.monotonic(), time.thread_time()
        scores = self.segmenter.infer(batch)
        t_infer, cpu_infer = time.monotonic(), time.thread_time()
        segmentation = self.segmenter.postprocess(scores, rgb.shape[:2])
        with self._lock:
            depth_msg, camera_info = self._depth, self._camera_info
            tolerance, alpha = self._depth_tolerance, self._overlay_alpha
        depth = self._matching_depth(msg, rgb.shape[:2], segmentation.net_ids, depth_msg,
                                     tolerance)
        intrinsics = self._intrinsics(rgb.shape[:2], camera_info)
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            estimate = self.locator.locate(segmentation.net_ids, segmentation.hero_prob,
                                           depth, intrinsics, stamp, rgb.shape[:2])
        if (intrinsics is not None and intrinsics.distortion_model
                and estimate.detection.intrinsics_source == IntrinsicsSource.CAMERA_INFO):
            self._bad_input('distortion_not_invertible',
                            f"camera_info's lens distortion {intrinsics.distortion_model} "
                            f'{list(intrinsics.distortion)} cannot be undone at the hero '
                            f'(pixel {estimate.detection.cx:.0f}, {estimate.detection.cy:.0f}); '
                            'bearing read as a pinhole for this frame. Check the calibration')
        if depth is not None and estimate.detection.range_source != RangeSource.DEPTH:
            self._bad_input('depth_no_valid_pixels', 'the hero blob has no valid depth '
                            '(0, NaN or inf); range falls back to size or bearing')
        t_post, cpu_post = time.monotonic(), time.thread_time()
        self._publish(msg.header, frame, rgb, segmentation, estimate, alpha)
        done, cpu_done = time.monotonic(), time.thread_time()
        stage_s = (t_convert - started, t_pre - t_convert, t_infer - t_pre, t_post - t_infer,
                   done - t_post)
        cpu_s = (cpu_convert - cpu_started, cpu_pre - cpu_convert, cpu_post - cpu_infer,
                 cpu_done - cpu_post)
        with self._lock:
            self._counts['processed'] += 1
            self._timings.append([(started - arrived) * 1e3] + [t * 1e3 for t in stage_s]
                                 + [t * 1e3 for t in cpu_s])

    def _matching_depth(self, msg, size, net_ids, depth_msg, tolerance):
        """Return the newest depth in metres if it fits this frame (stamp, size), else None."""
        if depth_msg is None or not (net_ids == HERO).any():
            return None
        if tolerance > 0.0:
            gap = abs(_seconds(depth_msg.header.stamp) - _seconds(msg.header.stamp))
            if gap > tolerance:
                self._bad_input('depth_stale', f'newest depth is {gap:.3f} s away from the '
                                f'image (depth_sync_tolerance {tolerance} s); not used')
                return None
        try:
            # Converted to metres only where the hero's blob reads it.
            depth = (DepthMetres.from_compressed(depth_msg)
                     if isinstance(depth_msg, CompressedImage) else DepthMetres(depth_msg))
        except ImageConversionError as error:
            self._bad_input('depth_bad_image', f'depth dropped: {error}')
            return None
        if depth.shape != size:
            self._bad_input('depth_size_mismatch',
                            f'depth is {depth.shape[1]}x{depth.shape[0]} but the image is '
                            f'{size[1]}x{size[0]}; publish depth registered to the colour '
                            'image at its resolution. Depth not used')
            return None
        return depth

    @staticmethod
    def _intrinsics(size, camera_info):
        if camera_info is None:
            return None
        intrinsics, width, height = camera_info
        return intrinsics.scaled_to(size[1], size[0], width, height)

    # Outputs ------------------------------------------------------------------------------

    def _publish(self, header, frame, rgb, segmentation, estimate, alpha):
        # What control waits for first; the images, for rviz, take most of the time.
        detection = estimate.detection
        summary = Float64MultiArray(data=detection.to_list())
        summary.layout.dim = [MultiArrayDimension(label=LAYOUT_LABEL, size=len(FIELDS),
                                                  stride=len(FIELDS))]
        self._pub_detection.publish(summary)
        if estimate.position is not None:
            pose = PoseStamped(header=header)
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = estimate.position
            pose.pose.orientation.w = 1.0
            self._pub_pose.publish(pose)
        if self._pub_marker.get_subscription_count() > 0:  # only rviz reads it
            self._publish_marker(header, estimate)
        mask_wanted = self._pub_mask.get_subscription_count() > 0
        raw_wanted = self._pub_overlay.get_subscription_count() > 0
        jpeg_wanted = self._pub_overlay_jpeg.get_subscription_count() > 0
        overlay_wanted = (raw_wanted or jpeg_wanted) and self._overlay_due()
        if not (mask_wanted or overlay_wanted):
            return
        # Frame-sized buffers are copied as little as possible: at 640x480 the copies were
        # the largest cost beyond inference (docs/perception.md). The messages written to
        # through image_to_array's views are the node's own.
        if mask_wanted:
            mask = self._mask_message(segmentation.size)
            class_ids = segmentation.class_ids(out=image_to_array(mask))
            mask.header = header
            self._pub_mask.publish(mask)
        else:
            class_ids = segmentation.class_ids()
        if not overlay_wanted:
            return
        overlay = _tinted(frame, rgb, class_ids, alpha, header)
        if raw_wanted:
            self._pub_overlay.publish(overlay)
        if jpeg_wanted:
            compressed = CompressedImage(header=header, format=JPEG_FORMAT)
            with self._lock:
                quality = self._jpeg_quality
            # Filled in place: the field's setter would copy the bytes once more.
            compressed.data.frombytes(encode_jpeg(image_to_array(overlay), quality))
            self._pub_overlay_jpeg.publish(compressed)

    def _mask_message(self, size):
        """Return the node's one mask Image, sized; publishing copies it, so it is reused."""
        self._mask = _sized(self._mask, size, 'mono8')
        return self._mask

    def _overlay_due(self):
        now_s = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            return self._overlay_limiter.ready(now_s)

    def _publish_marker(self, header, estimate):
        marker = Marker(header=header, ns='hero', id=0)
        if estimate.position is None:
            if not self._marker_shown:
                return
            marker.action = Marker.DELETE
            self._marker_shown = False
        elif estimate.detection.range_source == RangeSource.BEARING:
            marker.type = Marker.ARROW
            marker.points = [Point(), Point(x=2.0 * estimate.position[0],
                                            y=2.0 * estimate.position[1],
                                            z=2.0 * estimate.position[2])]
            marker.scale.x, marker.scale.y, marker.scale.z = 0.05, 0.1, 0.1
        else:
            marker.type = Marker.SPHERE
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (
                estimate.position)
            marker.pose.orientation.w = 1.0
            marker.scale.x = marker.scale.y = marker.scale.z = 0.5
        if marker.action != Marker.DELETE:
            marker.color.b, marker.color.a = 1.0, 0.8
            self._marker_shown = True
        self._pub_marker.publish(marker)

    def _publish_diagnostics(self):
        now = time.monotonic()
        with self._lock:
            counts, errors = Counter(self._counts), Counter(self._errors)
        timings = self.frame_timings()
        then, before = self._last_report
        self._last_report = (now, counts)
        elapsed = max(now - then, 1e-6)
        input_hz = (counts['images'] - before['images']) / elapsed
        processed_hz = (counts['processed'] - before['processed']) / elapsed
        status = DiagnosticStatus(name=f'{self.get_name()}: segmentation',
                                  hardware_id=str(self.segmenter.info.path))
        status.level, status.message = DiagnosticStatus.OK, 'ok'
        if self.segmenter.fell_back():
            status.level = DiagnosticStatus.WARN
            status.message = f'running on {self.segmenter.providers[0]} (fell back)'
        elif counts['images'] == before['images']:
            status.level, status.message = DiagnosticStatus.WARN, 'no images received'
        elif sum(errors.values()) > sum(self._reported_errors.values()):
            status.level, status.message = DiagnosticStatus.WARN, 'bad input (see counters)'
        self._reported_errors = errors
        values = {
            'input_rate_hz': f'{input_hz:.2f}',
            'processed_rate_hz': f'{processed_hz:.2f}',
            'images_received': counts['images'],
            'frames_processed': counts['processed'],
            'frames_dropped': counts['dropped'],
            'depth_images_received': counts['depth_images'],
            'providers_requested': ','.join(self.segmenter.requested_providers),
            'providers_active': ','.join(self.segmenter.providers),
            'camera_model': self._camera_model_text(),
        }
        if self.segmenter.fell_back() and self.segmenter.gpu_library_report:
            values['cuda_libraries'] = self.segmenter.gpu_library_report  # why, where seen
        if self.segmenter.providers[0] == 'TensorrtExecutionProvider':
            values['tensorrt_engine_cache'] = str(self.segmenter.tensorrt_cache or 'off')
        values.update({f'{name}_ms': f'{np.median(ms):.2f}' if ms else 'n/a'
                       for name, ms in timings.items()})
        values['inference_ms'] = values['infer_ms']
        # A mean, not a median: work done on some frames only (a rate-limited overlay) counts.
        beyond = [sum(row) for row in zip(*(timings[f'{stage}_cpu'] for stage in CPU_STAGES))]
        values['beyond_infer_cpu_mean_ms'] = f'{np.mean(beyond):.2f}' if beyond else 'n/a'
        values.update({f'errors.{kind}': count for kind, count in sorted(errors.items())})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diagnostics.publish(array)

    def _camera_model_text(self):
        """Say what turns pixels into the hero's direction, for whoever wonders why it is off."""
        with self._lock:
            camera_info, hfov = self._camera_info, self.locator.assumed_hfov_deg
        if camera_info is None:
            return f'no CameraInfo yet: a {hfov:g} deg field of view assumed (assumed_hfov_deg)'
        camera, width, height = camera_info
        matrix = 'P (image_rectified)' if self._image_rectified else 'K'
        lens = (f', {camera.distortion_model} distortion undone' if camera.distortion_model
                else ', no distortion')
        return (f'CameraInfo {matrix}{lens}: fx {camera.fx:.1f}, fy {camera.fy:.1f}, '
                f'cx {camera.cx:.1f}, cy {camera.cy:.1f} for {width}x{height}')

    def error_counts(self):
        """Return a copy of the bad-input counters by kind (also in /diagnostics)."""
        with self._lock:
            return Counter(self._errors)

    def frame_timings(self):
        """Return the last frames' ms: {'wait': [...], 'convert': [...], 'convert_cpu': ...}."""
        with self._lock:
            rows = list(self._timings)
        names = ('wait',) + STAGES + tuple(f'{stage}_cpu' for stage in CPU_STAGES)
        return {name: [row[i] for row in rows] for i, name in enumerate(names)}

    def frame_counts(self):
        """Return a copy of the frame counters: images, processed, dropped, depth_images."""
        with self._lock:
            return Counter(self._counts)

    def destroy_node(self):
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        return super().destroy_node()


def _image_error_kind(msg):
    if isinstance(msg, CompressedImage):
        return 'bad_compressed_image'
    if msg.encoding not in ENCODINGS:
        return 'unknown_encoding'
    if msg.encoding not in COLOUR_ENCODINGS:
        return 'not_a_colour_encoding'
    if msg.width == 0 or msg.height == 0:
        return 'zero_size'
    return 'bad_data_size'


class FrameConverter:
    """
    Camera frames to RGB, landing in an rgb8 Image wherever a conversion is needed.

    A packed rgb8 frame is used where it lies; every other encoding, and a compressed frame, is
    converted straight into this converter's own rgb8 Image, reused from frame to frame
    (publishing copies it). Either way the frame's pixels already sit in an Image, and the
    overlay is tinted into them without another copy of the frame.
    """

    def __init__(self):
        self.message = None   # the rgb8 Image conversions write into

    def convert(self, msg):
        """
        Return the frame as (H, W, 3) RGB and the Image holding those pixels, or None.

        None when they are nobody's message (read-only data: a bag's bytes). Raises
        ImageConversionError for frames that cannot be read.
        """
        if isinstance(msg, CompressedImage):
            rgb = compressed_to_rgb(msg, self._pixels)
        else:
            rgb = image_to_rgb(msg, self._pixels)
            if np.may_share_memory(rgb, image_to_array(msg)):
                return rgb, (msg if rgb.flags.writeable else None)
        self.message.header = msg.header
        return rgb, self.message

    def _pixels(self, height, width):
        self.message = _sized(self.message, (height, width, 3), 'rgb8')
        return image_to_array(self.message)


def _sized(image, shape, encoding):
    """Return `image` if it has this shape, else a new zeroed Image of it (reused buffers)."""
    if image is not None and (image.height, image.width) == shape[:2]:
        return image
    return fill_image(Image(), np.zeros(shape, np.uint8), encoding)


def _tinted(frame, rgb, class_ids, alpha, header):
    """
    Return the overlay Image: `frame`, the Image holding `rgb`, tinted in place.

    The frame is ours and no longer needed once the network has run. Without one (read-only
    pixels), the overlay is tinted into a new message.
    """
    if frame is not None:
        tint(rgb, class_ids, alpha, out=rgb)
        frame.encoding = 'rgb8'  # 8UC3 frames are taken as RGB
        return frame
    overlay = fill_image(Image(), rgb, 'rgb8')
    tint(rgb, class_ids, alpha, out=image_to_array(overlay))
    overlay.header = header
    return overlay


def _seconds(stamp):
    return stamp.sec + stamp.nanosec * 1e-9


def parse_args(argv):
    """--help for users; ROS arguments (--ros-args ...) pass through to rclpy."""
    node_cli.parse_node_args(
        argv, 'perception_node',
        'Segment camera frames (image, depth, camera_info) with the followme FCN '
        'and publish mask, mask_overlay (and mask_overlay/compressed), hero_pose, '
        'hero_detection, hero_marker '
        'and /diagnostics. See docs/perception.md.',
        PARAMETERS)


def main(args=None):
    parse_args(sys.argv if args is None else args)
    return node_cli.run_node('perception_node', PerceptionNode, (ModelError,), args)


if __name__ == '__main__':
    sys.exit(main())
