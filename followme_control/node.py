"""
control_node: hero estimates in, follow velocity commands out, at a fixed rate.

The thin ROS shell around followme_control.follow. Callbacks only hand estimates to the
controller; cmd_vel comes from a timer on the node's clock (simulated time with use_sim_time),
so a perception node that stops publishing still gets a command: the deadman's decelerate-to-
zero. See docs/control.md.
"""

from collections import OrderedDict
from dataclasses import fields
import math
import sys
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common import node_cli
from followme_common.node_params import float_param as _float, int_param as _int
from followme_control.follow import FollowController, FollowParams, State
from followme_perception.detection import HeroDetection, RangeSource
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool

RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}
THROTTLE_S = 5.0
# Detections kept for matching a hero_pose to its summary by stamp (a second at 30 Hz).
DETECTIONS_KEPT = 30
# perception publishes a bearing-only hero_pose as a unit vector (docs/perception.md).
UNIT_VECTOR_TOLERANCE = 1e-6
HINTS = {
    'non_finite': 'NaN or inf in the position or stamp',
    'behind_camera': 'optical z <= 0 (hero_pose must be in the camera optical frame)',
    'behind_drone': 'the hero would be behind the drone; check camera_pitch_deg',
    'stale': 'stamp older than target_timeout; check the perception latency, clocks and '
             'use_sim_time',
    'future_stamp': "stamp ahead of this node's clock; check clocks and use_sim_time",
    'out_of_order': 'stamp older than the newest accepted one',
    'implausible_jump': 'farther from the hero than she can have walked since last seen '
                        '(gate_radius, gate_speed): another object the network marked as her',
}
LOST_STATES = (State.HOVER, State.SEARCH)


def _fixed(description):
    return ParameterDescriptor(description=description, read_only=True)


def _controller_parameters():
    """Descriptors for every FollowParams field, from its metadata (one source of truth)."""
    parameters = {}
    for spec in fields(FollowParams):
        low, high = spec.metadata['range']
        description = spec.metadata['description']
        if spec.metadata['choices']:
            descriptor = ParameterDescriptor(
                description=description,
                additional_constraints=f"one of: {', '.join(spec.metadata['choices'])}")
        elif isinstance(spec.default, bool):
            descriptor = ParameterDescriptor(description=description)
        else:
            descriptor = _float(description, low, high)
        parameters[spec.name] = (spec.default, descriptor)
    return parameters


# name: (default, descriptor). The shell's own settings are fixed at start-up (read-only).
NODE_PARAMETERS = {
    'twist_stamped': (False, _fixed(
        'publish geometry_msgs/TwistStamped on cmd_vel instead of Twist')),
    'cmd_vel_frame_id': ('base_link', _fixed('frame_id of a TwistStamped cmd_vel')),
    'qos_reliability': ('best_effort', ParameterDescriptor(
        description='reliability of the hero_pose, hero_detection and odom subscriptions: '
                    'best_effort (connects to any publisher) or reliable',
        additional_constraints='one of: best_effort, reliable', read_only=True)),
    'qos_depth': (5, _int('history depth of those subscriptions (keep last N)', 1, 100,
                          read_only=True)),
    'diagnostics_period': (1.0, _float('seconds between /diagnostics reports', 0.1, 60.0,
                                       read_only=True)),
}
PARAMETERS = {**_controller_parameters(), **NODE_PARAMETERS}


class ControlNode(Node):
    """Turns hero_pose (+ hero_detection, odom) into cmd_vel, follow_state and diagnostics."""

    def __init__(self, **kwargs):
        super().__init__('control_node', **kwargs)
        self._lock = threading.Lock()  # guards the controller, detections and counters
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        params = self._read_params()
        problems = params.validate()
        reliability = self.get_parameter('qos_reliability').value
        if reliability not in RELIABILITY:
            problems.append(f"qos_reliability must be one of {', '.join(RELIABILITY)}, "
                            f'not {reliability!r}')
        if problems:
            raise ValueError('bad parameters: ' + '; '.join(problems))
        self.controller = FollowController(params)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._detections = OrderedDict()  # (sec, nanosec) -> HeroDetection
        self._newest_detection = None     # stamp (s) of the newest summary, any content
        self._counts = {'poses': 0, 'detections': 0, 'odoms': 0, 'commands': 0,
                        'bearing_only': 0, 'detection_malformed': 0}
        self._published_state = None
        self._reported_rejections = 0
        self._reported_jumps = 0

        self._stamped = self.get_parameter('twist_stamped').value
        self._frame_id = self.get_parameter('cmd_vel_frame_id').value
        self._pub_cmd = self.create_publisher(
            TwistStamped if self._stamped else Twist, 'cmd_vel', 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub_state = self.create_publisher(String, 'follow_state', latched)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_service(SetBool, 'enable', self._on_enable)

        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST,
                         depth=self.get_parameter('qos_depth').value,
                         reliability=RELIABILITY[self.get_parameter('qos_reliability').value])
        self.create_subscription(PoseStamped, 'hero_pose', self._on_pose, qos)
        self.create_subscription(Float64MultiArray, 'hero_detection', self._on_detection, qos)
        self.create_subscription(Odometry, 'odom', self._on_odom, qos)
        self._timer = self.create_timer(1.0 / params.rate_hz, self._on_timer)
        self.create_timer(self.get_parameter('diagnostics_period').value,
                          self._publish_diagnostics)
        self.get_logger().info(
            f'following at {params.follow_distance} m, {params.rate_hz} Hz, '
            f'{"TwistStamped" if self._stamped else "Twist"} on cmd_vel, '
            f'{params.filter_type} filter, camera pitch {params.camera_pitch_deg} deg')

    # Parameters -------------------------------------------------------------------------

    def _read_params(self):
        return FollowParams(**{spec.name: self.get_parameter(spec.name).value
                               for spec in fields(FollowParams)})

    def _check_parameters(self, params):
        changes = {p.name: p.value for p in params if p.name in FollowParams.__dataclass_fields__}
        if not changes:
            return SetParametersResult(successful=True)
        with self._lock:
            current = self.controller.params
        try:
            current.updated(**changes)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params):
        names = {p.name for p in params}
        if not names & FollowParams.__dataclass_fields__.keys():
            return
        new = self._read_params()
        with self._lock:
            old_rate = self.controller.params.rate_hz
            self.controller.set_params(new)
        if new.rate_hz != old_rate:
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / new.rate_hz, self._on_timer)
        self.get_logger().info('parameters updated: ' + ', '.join(
            f'{p.name}={p.value}' for p in params))

    # Inputs -------------------------------------------------------------------------------

    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_pose(self, msg):
        stamp = msg.header.stamp
        position = msg.pose.position
        with self._lock:
            self._counts['poses'] += 1
            detection = self._detections.get((stamp.sec, stamp.nanosec))
            if detection is not None:
                bearing_only = detection.range_source == RangeSource.BEARING
            else:  # the summary has not arrived (or is not published): recognise the unit
                bearing_only = abs(math.sqrt(position.x ** 2 + position.y ** 2 + position.z ** 2)
                                   - 1.0) < UNIT_VECTOR_TOLERANCE
            self._counts['bearing_only'] += bearing_only
            reason = self.controller.add_target(_seconds(stamp), position.x, position.y,
                                                position.z, self._now(), bearing_only)
        if reason:
            self.get_logger().warn(
                f'hero_pose rejected ({reason}: {HINTS.get(reason, reason)}): position '
                f'({position.x}, {position.y}, {position.z}), stamp {_seconds(stamp):.3f}, '
                f'now {self._now():.3f}', throttle_duration_sec=THROTTLE_S)

    def _on_detection(self, msg):
        try:
            detection = HeroDetection.from_list(msg.data)
        except (ValueError, OverflowError) as error:
            with self._lock:
                self._counts['detection_malformed'] += 1
            self.get_logger().warn(f'hero_detection ignored: {error}',
                                   throttle_duration_sec=THROTTLE_S)
            return
        with self._lock:
            self._counts['detections'] += 1
            key = (detection.stamp_sec, detection.stamp_nanosec)
            self._detections[key] = detection
            while len(self._detections) > DETECTIONS_KEPT:
                self._detections.popitem(last=False)
            self._newest_detection = max(self._newest_detection or detection.stamp,
                                         detection.stamp)

    def _on_odom(self, msg):
        # REP 105 odometry: pose in the odom frame (z up), twist in the body (child) frame.
        altitude = msg.pose.pose.position.z
        velocity = msg.twist.twist
        with self._lock:
            self._counts['odoms'] += 1
            reason = self.controller.add_odometry(
                _seconds(msg.header.stamp), altitude, velocity.linear.x, velocity.linear.y,
                velocity.angular.z, self._now())
        if reason:
            self.get_logger().warn(
                f'odom rejected ({reason}): altitude {altitude}, stamp '
                f'{_seconds(msg.header.stamp):.3f}, now {self._now():.3f}',
                throttle_duration_sec=THROTTLE_S)

    def _on_enable(self, request, response):
        with self._lock:
            self.controller.enable(request.data)
        response.success = True
        response.message = ('following enabled' if request.data
                            else 'following disabled: cmd_vel is zero')
        self.get_logger().info(response.message)
        return response

    # Output: the only place commands come from ---------------------------------------------

    def _on_timer(self):
        now = self.get_clock().now()
        with self._lock:
            command, state = self.controller.update(now.nanoseconds * 1e-9)
            self._counts['commands'] += 1
            jumps = self.controller.rejected.get('implausible_jump', 0)
        if jumps > self._reported_jumps:
            # Judged inside update(), not on arrival, so it is logged here.
            self._reported_jumps = jumps
            self.get_logger().warn(
                f"hero_pose rejected (implausible_jump: {HINTS['implausible_jump']}); "
                f'{jumps} so far', throttle_duration_sec=THROTTLE_S)
        twist = Twist()
        twist.linear.x, twist.linear.y, twist.linear.z = (
            command.forward, command.left, command.up)
        twist.angular.z = command.yaw_rate
        if self._stamped:
            msg = TwistStamped(twist=twist)
            msg.header.stamp = now.to_msg()
            msg.header.frame_id = self._frame_id
            self._pub_cmd.publish(msg)
        else:
            self._pub_cmd.publish(twist)
        if state != self._published_state:
            self._log_transition(self._published_state, state)
            self._published_state = state
            self._pub_state.publish(String(data=state.value))

    def _log_transition(self, old, new):
        text = f"follow state {old.value if old else 'START'} -> {new.value}"
        if {old, new} <= {State.FOLLOW, State.COAST}:
            self.get_logger().debug(text)  # short occlusions: frequent and harmless
        elif new in LOST_STATES:
            self.get_logger().warn(text)
        else:
            self.get_logger().info(text)

    def _publish_diagnostics(self):
        now = self._now()
        with self._lock:
            status = self.controller.status(now)
            counts = dict(self._counts)
            newest_detection = self._newest_detection
            params = self.controller.params
        rejected = status['rejected']
        total_rejected = sum(rejected.values()) + counts['detection_malformed']
        state = State(status['state'])
        report = DiagnosticStatus(name=f'{self.get_name()}: follow')
        report.level, report.message = DiagnosticStatus.OK, state.value
        if state in LOST_STATES:
            report.level = DiagnosticStatus.WARN
            report.message = f'{state.value}: hero lost'
        elif total_rejected > self._reported_rejections:
            report.level = DiagnosticStatus.WARN
            report.message = f'{state.value}: bad input rejected (see counters)'
        if status['non_finite_outputs']:
            report.level = DiagnosticStatus.ERROR
            report.message = f'{state.value}: non-finite commands were replaced by zero'
        self._reported_rejections = total_rejected
        command = status['command']
        values = {
            'state': state.value,
            'enabled': status['enabled'],
            'target_age_s': _fmt(status['target_age']),
            'perception_age_s': _fmt(None if newest_detection is None
                                     else now - newest_detection),
            'target_forward_m': _fmt(status['target'] and status['target'][0]),
            'target_left_m': _fmt(status['target'] and status['target'][1]),
            'range_valid': status['range_valid'],
            'altitude_hold': status['altitude_hold'],
            'odometry_fresh': status['odometry_fresh'],
            'cmd_forward': _fmt(command.forward),
            'cmd_up': _fmt(command.up),
            'cmd_yaw_rate': _fmt(command.yaw_rate),
            'filter_type': params.filter_type,
            'rate_hz': params.rate_hz,
            'non_finite_outputs': status['non_finite_outputs'],
        }
        values.update({f'received.{kind}': count for kind, count in counts.items()})
        values.update({f'rejected.{kind}': count for kind, count in sorted(rejected.items())})
        report.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[report])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diagnostics.publish(array)
        if self._published_state is not None:  # a late subscriber also hears the state
            self._pub_state.publish(String(data=self._published_state.value))

    def rejected_counts(self):
        """Return a copy of the rejected-input counters by reason (also in /diagnostics)."""
        with self._lock:
            return dict(self.controller.rejected)


def _seconds(stamp):
    return stamp.sec + stamp.nanosec * 1e-9


def _fmt(value):
    return 'none' if value is None else f'{value:.3f}'


def parse_args(argv):
    """--help for users; ROS arguments (--ros-args ...) pass through to rclpy."""
    node_cli.parse_node_args(
        argv, 'control_node',
        'Follow the hero: hero_pose (+ hero_detection, odom) in; cmd_vel (body '
        'frame, REP 103), follow_state and /diagnostics out; std_srvs/SetBool '
        'service `enable`. See docs/control.md.',
        PARAMETERS)


def main(args=None):
    parse_args(sys.argv if args is None else args)
    return node_cli.run_node('control_node', ControlNode, (ValueError, ParameterException),
                             args, hint=_parameter_hint)


def _parameter_hint(error):
    if isinstance(error, InvalidParameterTypeException):
        return ' (write floating-point values with a decimal point: 4.0, not 4)'
    return ''


if __name__ == '__main__':
    sys.exit(main())
