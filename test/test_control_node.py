"""control_node over real rclpy and Fast DDS: hero poses in, cmd_vel out."""

import itertools
import math
import time

from conftest import REPO, spin_until
from diagnostic_msgs.msg import DiagnosticArray
from followme_control.follow import body_to_optical, FollowParams
from followme_control.node import ControlNode, main, PARAMETERS
from followme_perception.detection import HeroDetection, RangeSource
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool
import yaml

pytestmark = pytest.mark.ros

NAMESPACES = (f'/control_test_{i}' for i in itertools.count())
PITCH = 25.0
FRAME_PERIOD = 1.0 / 15.0  # a 15 Hz perception node


class Rig:
    """A control node and a test node that plays perception, odometry and the drone."""

    def __init__(self, executor, stamped=False, **overrides):
        self.executor = executor
        self.namespace = next(NAMESPACES)
        values = {'camera_pitch_deg': PITCH, 'twist_stamped': stamped, **overrides}
        self.node = ControlNode(namespace=self.namespace, parameter_overrides=[
            Parameter(name, value=value) for name, value in values.items()])
        self.peer = rclpy.create_node('control_test_peer', namespace=self.namespace)
        self.perception = None
        self.start_perception()
        self.odom = self.peer.create_publisher(Odometry, 'odom', 10)
        self.clock = self.peer.create_publisher(Clock, '/clock', 10)
        self.commands, self.states, self.diagnostics = [], [], []
        self.peer.create_subscription(TwistStamped if stamped else Twist, 'cmd_vel',
                                      self.commands.append, 50)
        self.peer.create_subscription(
            String, 'follow_state', lambda msg: self.states.append(msg.data),
            QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.peer.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.diagnostics.append, 10)
        self.enable_client = self.peer.create_client(SetBool, 'enable')
        executor.add_node(self.node)
        executor.add_node(self.peer)
        self._next_frame = 0.0

    def start_perception(self):
        """Start a separate node with the perception node's two outputs, like a real one."""
        self.perception = rclpy.create_node('fake_perception', namespace=self.namespace)
        self.pose_pub = self.perception.create_publisher(PoseStamped, 'hero_pose', 10)
        self.detection_pub = self.perception.create_publisher(
            Float64MultiArray, 'hero_detection', 10)

    def stop_perception(self):
        self.perception.destroy_node()
        self.perception = None

    def publish_hero(self, forward=8.0, left=2.0, up=-5.0, age=0.0, position=None,
                     range_source=RangeSource.DEPTH, stamp=None, summary=True):
        """Publish a detection summary and a hero_pose for a hero at a body-frame offset."""
        if stamp is None:
            stamp = self.node.get_clock().now().to_msg()
            seconds = stamp.sec + stamp.nanosec * 1e-9 - age
            stamp.sec, stamp.nanosec = int(seconds), int((seconds % 1.0) * 1e9)
        x, y, z = position or body_to_optical(forward, left, up, PITCH)
        if range_source == RangeSource.BEARING:
            norm = math.sqrt(x * x + y * y + z * z)
            x, y, z = x / norm, y / norm, z / norm
        detection = HeroDetection(stamp_sec=stamp.sec, stamp_nanosec=stamp.nanosec, present=1,
                                  range_m=math.nan if range_source == RangeSource.BEARING
                                  else math.sqrt(x * x + y * y + z * z),
                                  range_source=range_source)
        if summary:
            self.detection_pub.publish(Float64MultiArray(data=detection.to_list()))
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = 'camera_optical'
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = x, y, z
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)

    def feed(self, **hero):
        """For spin_until predicates: publish a hero at the perception rate; returns False."""
        if self.perception is not None and time.monotonic() >= self._next_frame:
            self._next_frame = time.monotonic() + FRAME_PERIOD
            self.publish_hero(**hero)
        return False

    def spin_until(self, predicate, timeout=15.0, **hero):
        """Spin (feeding the hero unless hero is None) until predicate() holds."""
        feeding = hero.pop('feed', True)
        return spin_until(self.executor,
                          lambda: (feeding and self.feed(**hero)) or predicate(), timeout)

    def twist(self, index=-1):
        msg = self.commands[index]
        return msg.twist if isinstance(msg, TwistStamped) else msg

    def call_enable(self, value):
        assert self.enable_client.wait_for_service(timeout_sec=10.0)
        future = self.enable_client.call_async(SetBool.Request(data=value))
        assert spin_until(self.executor, future.done, 10.0)
        return future.result()

    def diagnostic_values(self):
        status = self.diagnostics[-1].status[0]
        return {kv.key: kv.value for kv in status.values}

    def close(self):
        if self.perception is not None:
            self.perception.destroy_node()


@pytest.fixture
def rig_factory(executor):
    rigs = []

    def make(**kwargs):
        rigs.append(Rig(executor, **kwargs))
        return rigs[-1]
    yield make
    for rig in rigs:
        rig.close()


def is_finite(twist):
    return all(map(math.isfinite, (twist.linear.x, twist.linear.y, twist.linear.z,
                                   twist.angular.x, twist.angular.y, twist.angular.z)))


def test_follows_a_hero_on_the_left(rig_factory):
    rig = rig_factory()
    assert rig.spin_until(
        lambda: rig.commands and rig.twist().linear.x > 0.2 and rig.twist().angular.z > 0.05)
    assert 'FOLLOW' in rig.states
    assert rig.twist().linear.y == 0.0
    assert rig.spin_until(lambda: rig.diagnostics, feed=False)
    assert rig.diagnostic_values()['state'] in ('FOLLOW', 'COAST')


def test_commands_flow_from_the_timer_without_any_input(rig_factory):
    rig = rig_factory()
    assert rig.spin_until(lambda: len(rig.commands) >= 5 and rig.states, feed=False)
    assert all(is_finite(rig.twist(i)) and rig.twist(i) == Twist() for i in range(5))
    assert rig.states[-1] == 'IDLE'


def test_twist_stamped_option(rig_factory):
    rig = rig_factory(stamped=True)
    assert rig.spin_until(lambda: rig.commands and rig.twist().angular.z > 0.05)
    assert rig.commands[-1].header.frame_id == 'base_link'
    assert rig.commands[-1].header.stamp.sec > 0


def test_stale_stamps_are_rejected_and_never_followed(rig_factory):
    rig = rig_factory(target_timeout=0.5)
    assert rig.spin_until(lambda: rig.node.rejected_counts().get('stale', 0) >= 10, age=3.0)
    assert rig.commands and all(rig.twist(i) == Twist() for i in range(len(rig.commands)))
    assert set(rig.states) == {'IDLE'}
    assert rig.spin_until(lambda: rig.diagnostics and 'rejected.stale' in
                          rig.diagnostic_values(), age=3.0)


def test_nan_poses_are_rejected_and_commands_stay_finite(rig_factory):
    rig = rig_factory()
    nan_pose = (math.nan, 0.5, 5.0)
    assert rig.spin_until(lambda: rig.node.rejected_counts().get('non_finite', 0) >= 5,
                          position=nan_pose)
    assert all(is_finite(rig.twist(i)) and rig.twist(i) == Twist()
               for i in range(len(rig.commands)))
    # Good poses after bad ones are followed.
    assert rig.spin_until(lambda: rig.twist().angular.z > 0.05)


def test_a_perception_node_that_stops_and_restarts(rig_factory):
    rig = rig_factory(target_timeout=0.5, search_yaw_rate=0.0)
    assert rig.spin_until(lambda: rig.commands and rig.twist().linear.x > 0.5)
    rig.stop_perception()
    # Lost: the deadman brings every axis to exactly zero, through the acceleration limits.
    first_lost = len(rig.commands)
    assert rig.spin_until(lambda: 'HOVER' in rig.states and rig.twist() == Twist())
    speeds = [rig.twist(i).linear.x for i in range(first_lost, len(rig.commands))]
    assert any(0.0 < speed < max(speeds) for speed in speeds)  # it slowed down on the way
    # Perception comes back: following resumes.
    rig.start_perception()
    before = len(rig.states)
    assert rig.spin_until(lambda: 'FOLLOW' in rig.states[before:] and
                          rig.twist().linear.x > 0.2)


def test_enable_service_disables_and_reenables(rig_factory):
    rig = rig_factory()
    assert rig.spin_until(lambda: rig.commands and rig.twist().linear.x > 0.2)
    response = rig.call_enable(False)
    assert response.success and 'disabled' in response.message
    count = len(rig.commands)
    assert rig.spin_until(lambda: len(rig.commands) > count + 5 and rig.states[-1] == 'DISABLED')
    assert all(rig.twist(i) == Twist() for i in range(count + 1, len(rig.commands)))
    assert rig.call_enable(True).success
    assert rig.spin_until(lambda: rig.states[-1] == 'FOLLOW' and rig.twist().linear.x > 0.2)


def test_bearing_only_estimates_turn_but_do_not_move(rig_factory):
    rig = rig_factory()
    assert rig.spin_until(lambda: len(rig.commands) > 20 and rig.twist().angular.z > 0.05,
                          range_source=RangeSource.BEARING)
    assert all(rig.twist(i).linear.x == 0.0 for i in range(len(rig.commands)))


def test_a_unit_vector_pose_without_summary_is_bearing_only(rig_factory):
    rig = rig_factory()
    assert rig.spin_until(lambda: len(rig.commands) > 20 and rig.twist().angular.z > 0.05,
                          range_source=RangeSource.BEARING, summary=False)
    assert all(rig.twist(i).linear.x == 0.0 for i in range(len(rig.commands)))
    assert rig.spin_until(lambda: rig.diagnostics and int(
        rig.diagnostic_values()['received.bearing_only']) > 0, feed=False)


def test_malformed_detection_is_counted(rig_factory):
    rig = rig_factory()
    rig.detection_pub.publish(Float64MultiArray(data=[1.0, 2.0]))
    assert rig.spin_until(lambda: rig.diagnostics and rig.diagnostic_values().get(
        'received.detection_malformed') == '1', feed=False)


def test_altitude_hold_from_odom(rig_factory):
    rig = rig_factory(desired_altitude=10.0)

    def publish_odom():
        odom = Odometry()
        odom.header.stamp = rig.node.get_clock().now().to_msg()
        odom.pose.pose.position.z = 7.0
        rig.odom.publish(odom)
        return False
    assert rig.spin_until(lambda: publish_odom() or (rig.commands and rig.twist().linear.z > 0.1))


def test_parameter_updates_are_validated(rig_factory):
    rig = rig_factory()
    node = rig.node
    refused = node.set_parameters([Parameter('follow_distance', value=0.1)])[0]
    assert not refused.successful
    refused = node.set_parameters([Parameter('fresh_timeout', value=5.0)])[0]
    assert not refused.successful and 'target_timeout' in refused.reason
    refused = node.set_parameters([Parameter('filter_type', value='particle')])[0]
    assert not refused.successful and 'kalman' in refused.reason
    refused = node.set_parameters([Parameter('twist_stamped', value=True)])[0]
    assert not refused.successful  # read-only: the publisher's type is fixed at start-up
    assert node.controller.params.follow_distance == 4.0
    assert node.controller.params.filter_type == 'kalman'
    accepted = node.set_parameters([Parameter('follow_distance', value=6.0),
                                    Parameter('rate_hz', value=40.0)])
    assert all(result.successful for result in accepted)
    assert node.controller.params.follow_distance == 6.0
    assert rig.spin_until(lambda: len(rig.commands) > 10, feed=False)


def test_the_config_file_section_matches_the_declared_parameters(executor):
    config = yaml.safe_load((REPO / 'config' / 'followme.yaml').read_text())
    values = config['/**/control_node']['ros__parameters']
    assert set(values) == set(PARAMETERS)
    node = ControlNode(namespace=next(NAMESPACES), parameter_overrides=[
        Parameter(name, value=value) for name, value in values.items()])
    executor.add_node(node)
    assert node.controller.params == FollowParams()  # the file restates the defaults


def test_help_lists_the_parameters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['control_node', '--help'])
    assert exit_info.value.code == 0
    assert 'follow_distance (default 4.0)' in capsys.readouterr().out


def test_bad_start_up_parameters_are_a_clean_error(executor):
    with pytest.raises(ValueError, match='fresh_timeout'):
        ControlNode(namespace=next(NAMESPACES), parameter_overrides=[
            Parameter('fresh_timeout', value=3.0), Parameter('target_timeout', value=1.0)])


def test_staleness_is_judged_on_simulated_time(rig_factory):
    rig = rig_factory(use_sim_time=True)
    sim_start = 1000.0

    def tick():
        seconds = sim_start + time.monotonic() - began
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(seconds), int((seconds % 1.0) * 1e9)
        rig.clock.publish(msg)
        return False
    began = time.monotonic()
    # Poses stamped on the simulated clock are followed.
    assert rig.spin_until(lambda: tick() or (rig.commands and rig.twist().angular.z > 0.05))
    # Poses stamped with wall time are 'from the future' for a clock at 1000 s.
    wall = rig.peer.get_clock().now().to_msg()
    rig.publish_hero(stamp=wall)
    assert rig.spin_until(
        lambda: tick() or rig.node.rejected_counts().get('future_stamp', 0) >= 1, feed=False)
