"""
unity_bridge: the Unity quadrotor simulator on one side, ROS topics on the other.

The thin ROS shell around followme_control.unity_bridge.protocol (wire format, maths) and
.server (the socket.io server). Simulator frames become image, depth, camera_info, drone_pose
and camera_pose, stamped with the frame's own time. Back to the simulator go `object_detected`
targets: the hero's world position (mode `target`, the classic) or where cmd_vel would take the
quad (mode `velocity`). See docs/unity_bridge.md.
"""

from collections import Counter
import math
import sys
import threading
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common import node_cli
from followme_common.image_msgs import fill_image
from followme_common.node_params import float_param as _float, int_param as _int
from followme_control.unity_bridge import protocol
from followme_control.unity_bridge.server import QuadSimServer, ServerListener
from geometry_msgs.msg import Pose as PoseMsg, PoseStamped, Twist
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

MODES = ('target', 'velocity')
RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}
THROTTLE_S = 5.0
# perception publishes a bearing-only hero_pose (no range) as a unit vector (docs/perception.md).
UNIT_VECTOR_TOLERANCE = 1e-6
# A frame older than this (arrival time) makes the link WARN in diagnostics.
FRAME_SILENCE_S = 2.0
PROBLEMS = {
    'missing_field': 'sensor_frame without a field, or with a field of the wrong type',
    'bad_timestamp': 'timestamp that is not a positive number of seconds',
    'bad_base64': 'image field that is not valid base64',
    'not_jpeg_or_png': 'image bytes that are neither JPEG nor PNG',
    'bad_image': 'JPEG/PNG that does not decode, or depth that is not 8 bit',
    'wrong_size': 'image of another size than image_width x image_height',
    'bad_pose': "pose or gimbal_pose that is not 'x,y,z,roll,pitch,yaw' in finite numbers",
    'unknown_events': 'event other than sensor_frame',
    'malformed_packets': 'socket.io packet that does not parse',
    'payload_too_large': 'message above max_payload_bytes (connection closed)',
    'rejected_connections': 'second client refused while one is connected',
    'hero_pose_unmatched': 'hero_pose whose stamp matches no recent frame',
    'hero_pose_invalid': 'hero_pose with NaN/inf or in another frame than camera_frame',
    'hero_bearing_only': 'hero_pose without range (unit vector): counted as seen, not sent',
    'cmd_vel_invalid': 'cmd_vel with NaN/inf',
    'cmd_vel_without_pose': 'cmd_vel while no fresh drone pose is known',
}


def _text(description, choices=None):
    return ParameterDescriptor(
        description=description, read_only=True,
        additional_constraints=f"one of: {', '.join(choices)}" if choices else '')


# name: (default, descriptor). Connection, frames and topics are fixed at start-up (read-only);
# the numbers the frame decoding and targets use can change at run time.
PARAMETERS = {
    'bind_address': ('127.0.0.1', _text(
        'address the socket.io server listens on; anything but loopback lets any host on the '
        'network feed images and receive targets (no authentication)')),
    'port': (4567, _int('TCP port (the simulator connects to 4567; 0 = any free port)',
                        0, 65535, read_only=True)),
    'heartbeat_interval_s': (1.0, _float(
        'seconds between Engine.IO pings; the simulator drops Follow after 3 s without one',
        0.5, 2.5, read_only=True)),
    'max_payload_bytes': (4_000_000, _int(
        'largest socket.io message accepted; a larger one closes the connection',
        100_000, 64_000_000, read_only=True)),
    'mode': ('target', _text(
        'target: hero_pose -> object_detected at the hero (classic); velocity: cmd_vel -> '
        'object_detected at the commanded point', MODES)),
    'image_width': (256, _int('expected frame width in pixels (others are dropped)', 16, 4096,
                              read_only=True)),
    'image_height': (256, _int('expected frame height in pixels (others are dropped)', 16,
                               4096, read_only=True)),
    'depth_scale': (protocol.DEFAULT_DEPTH_SCALE, _float(
        'metres per depth-image unit (50/255 in the shipped script; an old build used 100/255)',
        1e-4, 10.0)),
    'camera_hfov_deg': (protocol.CLASSIC_HFOV_DEG, _float(
        'horizontal field of view of the simulator camera for camera_info (classic: '
        '2 atan(1/2) = 53.13, the original fx = image width)', 1.0, 179.0)),
    'world_frame': ('world', _text('frame_id of drone_pose and camera_pose')),
    'camera_frame': ('camera_optical_frame', _text(
        'frame_id of image, depth and camera_info (optical: z forward, x right, y down)')),
    'lost_after_frames': (6, _int(
        'send object_lost after more than this many frames in a row without the hero', 1, 1000,
        read_only=True)),
    'pose_history_frames': (50, _int(
        'frames whose camera pose is kept to place a late hero_pose (10 s at 5 Hz)', 2, 10000,
        read_only=True)),
    'velocity_horizon_s': (1.0, _float(
        'velocity mode: target = pose + cmd_vel x this horizon', 0.1, 10.0)),
    'pose_timeout_s': (1.0, _float(
        'velocity mode: ignore cmd_vel when the newest drone pose arrived longer ago', 0.1,
        10.0)),
    'marker_duration_s': (0.4, _float('lifetime of the hero box marker in the simulator',
                                      0.05, 60.0)),
    'qos_reliability': ('reliable', _text(
        'reliability of the image, depth and camera_info publishers (reliable also serves '
        'best_effort subscribers)', tuple(RELIABILITY))),
    'qos_depth': (5, _int('history depth of those publishers (keep last N)', 1, 100,
                          read_only=True)),
    'diagnostics_period': (1.0, _float('seconds between /diagnostics reports', 0.1, 60.0,
                                       read_only=True)),
}
_CHOICES = {'mode': MODES, 'qos_reliability': tuple(RELIABILITY)}
_NON_EMPTY = ('bind_address', 'world_frame', 'camera_frame')


def _stamp(stamp_ns: int) -> Time:
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def _pose_msg(position, rotation) -> PoseMsg:
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in position)
    q = protocol.matrix_to_quaternion(rotation)
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = q
    return msg


class UnityBridgeNode(Node, ServerListener):
    """Serves the simulator's socket.io client and turns its frames into ROS messages."""

    def __init__(self, **kwargs):
        super().__init__('unity_bridge', **kwargs)
        self._lock = threading.Lock()  # guards history, tracker, latest pose, counters
        self.add_on_set_parameters_callback(self._check_parameters)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.mode = self._param('mode')
        self._world_frame = self._param('world_frame')
        self._camera_frame = self._param('camera_frame')
        self._history = protocol.PoseHistory(self._param('pose_history_frames'))
        self._tracker = protocol.LostTracker(self._param('lost_after_frames'))
        self._latest_drone = None       # (Pose, arrival monotonic time)
        self._last_frame_time = None    # arrival monotonic time of the newest good frame
        self._marker_id = 0
        self.counts = Counter()
        self._problem_loggers = {kind: self.get_logger().get_child(kind) for kind in PROBLEMS}

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._param('qos_depth'),
                         reliability=RELIABILITY[self._param('qos_reliability')])
        self._pub_image = self.create_publisher(Image, 'image', qos)
        self._pub_depth = self.create_publisher(Image, 'depth', qos)
        self._pub_info = self.create_publisher(CameraInfo, 'camera_info', qos)
        self._pub_drone = self.create_publisher(PoseStamped, 'drone_pose', 10)
        self._pub_camera = self.create_publisher(PoseStamped, 'camera_pose', 10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # best_effort subscriptions match publishers of either reliability.
        inputs = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                            reliability=ReliabilityPolicy.BEST_EFFORT)
        if self.mode == 'target':
            self.create_subscription(PoseStamped, 'hero_pose', self._on_hero_pose, inputs)
        else:
            self.create_subscription(Twist, 'cmd_vel', self._on_cmd_vel, inputs)
        self.create_timer(self._param('diagnostics_period'), self._publish_diagnostics)

        host, port = self._param('bind_address'), self._param('port')
        try:
            self.server = QuadSimServer(
                self, host, port, heartbeat_s=self._param('heartbeat_interval_s'),
                max_payload_bytes=self._param('max_payload_bytes'))
        except OSError as error:
            raise RuntimeError(
                f'cannot listen on {host}:{port} ({error.strerror or error}); is another '
                'unity_bridge (or the original follower.py) running? Stop it, or set the '
                'port parameter (and the port the simulator connects to) to another value'
            ) from error
        self.server.start()
        self.bound_address = self.server.address
        if host not in ('127.0.0.1', 'localhost', '::1'):
            self.get_logger().warn(
                f'listening on {host}, not loopback: any host that can reach this port can '
                'feed images into ROS and read the targets (there is no authentication)')
        self.get_logger().info(
            f'waiting for the simulator on {self.bound_address[0]}:{self.bound_address[1]} '
            f'(mode {self.mode}, heartbeat {self._param("heartbeat_interval_s")} s)')

    def destroy_node(self):
        self.server.close()
        return super().destroy_node()

    # Parameters -------------------------------------------------------------------------

    def _param(self, name):
        return self.get_parameter(name).value

    def _check_parameters(self, params):
        for param in params:
            if param.name in _CHOICES and param.value not in _CHOICES[param.name]:
                return SetParametersResult(
                    successful=False, reason=f'{param.name} must be one of '
                                             f"{', '.join(_CHOICES[param.name])}, not "
                                             f'{param.value!r}')
            if param.name in _NON_EMPTY and not str(param.value).strip():
                return SetParametersResult(successful=False,
                                           reason=f'{param.name} must not be empty')
        return SetParametersResult(successful=True)

    # Simulator side (server threads) ------------------------------------------------------

    def on_connect(self, sid):
        with self._lock:
            self.counts['connections'] += 1
            self._history.clear()
            self._tracker.reset()
        self.get_logger().info('simulator connected')

    def on_disconnect(self, sid, reason):
        with self._lock:
            self.counts['disconnections'] += 1
        self.get_logger().info(f'simulator disconnected ({reason})')

    def on_problem(self, kind, detail):
        with self._lock:
            self.counts[kind] += 1
        self._problem_loggers[kind].warn(f'{detail} [{kind}]', throttle_duration_sec=THROTTLE_S)

    def on_event(self, event, args):
        if event != 'sensor_frame':
            self.on_problem('unknown_events', f"ignored unknown event '{str(event)[:60]}'")
            return
        with self._lock:
            self.counts['frames_received'] += 1
        try:
            frame = self._decoder().decode(args[0] if args else None)
        except protocol.FrameError as error:
            self.on_problem(error.kind, f'dropped a sensor_frame: {error}')
            return
        with self._lock:
            self._history.add(frame.stamp_ns, frame.camera)
            self._latest_drone = (frame.drone, time.monotonic())
            self._last_frame_time = time.monotonic()
            lost = self.mode == 'target' and self._tracker.frame_arrived(frame.stamp_ns)
        self._publish_frame(frame)
        if lost:
            self._send('object_lost', protocol.object_lost_payload())
            self.get_logger().info(f'hero lost: object_lost after more than '
                                   f'{self._tracker.lost_after_frames} frames without it')
        with self._lock:  # last, so a test that sees the count sees everything this frame did
            self.counts['frames_published'] += 1

    def _decoder(self):
        return protocol.FrameDecoder(self._param('image_width'), self._param('image_height'),
                                     self._param('depth_scale'))

    def _publish_frame(self, frame):
        header = Header(stamp=_stamp(frame.stamp_ns), frame_id=self._camera_frame)
        self._pub_image.publish(fill_image(Image(header=header), frame.rgb, 'rgb8'))
        self._pub_depth.publish(fill_image(Image(header=header), frame.depth_m, '32FC1'))
        self._pub_info.publish(self._camera_info(header))
        world = Header(stamp=header.stamp, frame_id=self._world_frame)
        self._pub_drone.publish(PoseStamped(
            header=world, pose=_pose_msg(frame.drone.position, frame.drone.rotation())))
        self._pub_camera.publish(PoseStamped(
            header=world, pose=_pose_msg(frame.camera.position,
                                         protocol.optical_rotation(frame.camera))))

    def _camera_info(self, header):
        camera = protocol.PinholeCamera(self._param('image_width'), self._param('image_height'),
                                        self._param('camera_hfov_deg'))
        return CameraInfo(header=header, width=camera.width, height=camera.height,
                          distortion_model='plumb_bob', d=[0.0] * 5, k=camera.k(),
                          r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], p=camera.p())

    def _send(self, event, payload):
        if self.server.emit(event, payload):
            with self._lock:
                self.counts[f'{event}_sent'] += 1

    # ROS side (executor) ------------------------------------------------------------------

    def _on_hero_pose(self, msg):
        p = msg.pose.position
        point = (p.x, p.y, p.z)
        if not all(math.isfinite(v) for v in point) or msg.header.frame_id != self._camera_frame:
            self.on_problem('hero_pose_invalid', f'dropped a hero_pose in frame '
                                                 f"'{msg.header.frame_id}' at {point}: expected "
                                                 f"finite numbers in '{self._camera_frame}'")
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            camera = self._history.get(stamp_ns)
            if camera is not None:
                self._tracker.hero_seen(stamp_ns)
                self._marker_id = (self._marker_id + 1) % 100_000
                marker_id = self._marker_id
        if camera is None:
            self.on_problem('hero_pose_unmatched', 'dropped a hero_pose whose stamp matches no '
                                                   'recent frame (too late, or not from this '
                                                   'simulator)')
            return
        if abs(math.hypot(*point) - 1.0) < UNIT_VECTOR_TOLERANCE:
            self.on_problem('hero_bearing_only', 'hero seen without a range: kept following, '
                                                 'no object_detected sent')
            return
        world = protocol.optical_to_world(camera, point)
        self._send('object_detected', protocol.object_detected_payload(world))
        self._send('create_box_marker', protocol.box_marker_payload(
            marker_id, world, self._param('marker_duration_s')))

    def _on_cmd_vel(self, msg):
        linear = (msg.linear.x, msg.linear.y, msg.linear.z)
        if not all(math.isfinite(v) for v in linear):
            self.on_problem('cmd_vel_invalid', f'dropped a cmd_vel with linear {linear}')
            return
        with self._lock:
            latest = self._latest_drone
        if latest is None or time.monotonic() - latest[1] > self._param('pose_timeout_s'):
            self.on_problem('cmd_vel_without_pose', 'dropped a cmd_vel: no drone pose from the '
                                                    'simulator within pose_timeout_s')
            return
        target = protocol.velocity_target(latest[0], linear, self._param('velocity_horizon_s'))
        self._send('object_detected', protocol.object_detected_payload(target))

    def _publish_diagnostics(self):
        with self._lock:
            counts = dict(self.counts)
            last_frame = self._last_frame_time
            following = self._tracker.following
        report = DiagnosticStatus(name=f'{self.get_name()}: simulator link',
                                  hardware_id='unity-quadsim')
        frame_age = None if last_frame is None else time.monotonic() - last_frame
        if not self.server.connected:
            report.level = DiagnosticStatus.WARN
            host, port = self.bound_address
            report.message = f'no simulator connected on {host}:{port}'
        elif frame_age is None or frame_age > FRAME_SILENCE_S:
            report.level = DiagnosticStatus.WARN
            report.message = 'connected, no sensor_frame (is the simulator in Follow Me mode?)'
        else:
            report.level = DiagnosticStatus.OK
            report.message = 'connected, frames arriving'
        values = {'mode': self.mode, 'connected': self.server.connected,
                  'following': following,
                  'frame_age_s': 'none' if frame_age is None else f'{frame_age:.3f}'}
        for name in ('connections', 'disconnections', 'frames_received', 'frames_published',
                     'object_detected_sent', 'create_box_marker_sent', 'object_lost_sent',
                     *PROBLEMS):
            values[name] = counts.get(name, 0)
        report.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[report])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diagnostics.publish(array)


def parse_args(argv):
    """--help for users; ROS arguments (--ros-args ...) pass through to rclpy."""
    node_cli.parse_node_args(
        argv, 'unity_bridge',
        'Serve the Unity quadrotor simulator (Follow Me mode) on socket.io: its '
        'frames become image, depth, camera_info, drone_pose, camera_pose; '
        'hero_pose (mode target) or cmd_vel (mode velocity) become object_detected '
        'targets. See docs/unity_bridge.md.',
        PARAMETERS)


def main(args=None):
    parse_args(sys.argv if args is None else args)
    return node_cli.run_node('unity_bridge', UnityBridgeNode, (RuntimeError, ParameterException),
                             args)


if __name__ == '__main__':
    sys.exit(main())
