"""
record: write chosen topics to a rosbag2 bag (.mcap, or .db3) without a rosbag2 install.

Messages are taken off the wire as CDR bytes (a raw subscription: exactly what rclpy's
serialize_message would give, without decoding and encoding again) and stamped with the
receive time, as `ros2 bag record` does. Types come from the graph or from TOPIC:TYPE. Each
topic's subscription QoS follows its publishers (best effort if any of them is, as camera
drivers are), so sensor topics are matched. Topics that appear later are picked up.
"""

import argparse
from datetime import datetime
from pathlib import Path
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common.bags.msgtypes import message_class, UnknownTypeError
from followme_common.bags.spinning import BackgroundSpin
from followme_common.bags.storage import (BagError, normalise_type_name, offered_qos,
                                          QueuedBagWriter, STORAGE_CHOICES)
from followme_common.node_params import declare_checked
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, SetParametersResult
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args

RELIABILITY_CHOICES = ('auto', 'reliable', 'best_effort')
# Not recorded with `all`: ROS's own bookkeeping topics.
IGNORED_WITH_ALL = ('/rosout', '/parameter_events')


def _float_range(low, high):
    return [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]


PARAMETERS = {
    # name: (default, description, descriptor extras)
    'output': ('', 'bag folder to create (default: rosbag2_<date>-<time> here)', {}),
    'topics': (Parameter.Type.STRING_ARRAY,
               "topics to record, each 'name' or 'name:pkg/msg/Type'", {}),
    'all': (False, 'record every topic in the graph (except /rosout, /parameter_events)', {}),
    'storage': ('mcap', "file format: 'mcap' or 'sqlite3' (.db3)", {}),
    'duration': (0.0, 'stop after this many seconds (wall clock); 0: until Ctrl-C',
                 {'floating_point_range': _float_range(0.0, 1e6)}),
    'reliability': ('auto', "subscription reliability: 'auto' (follow the publishers), "
                    "'reliable' or 'best_effort'", {}),
    'depth': (100, 'subscription queue depth',
              {'integer_range': [IntegerRange(from_value=1, to_value=10000, step=1)]}),
    'discovery_period': (0.5, 'seconds between looks for new topics and publishers',
                         {'floating_point_range': _float_range(0.05, 60.0)}),
}


def validate(name, value):
    """Why a parameter value is refused, or None when it is fine."""
    if name == 'storage' and value not in STORAGE_CHOICES:
        return f"storage must be one of {', '.join(STORAGE_CHOICES)}, not '{value}'"
    if name == 'reliability' and value not in RELIABILITY_CHOICES:
        return f"reliability must be one of {', '.join(RELIABILITY_CHOICES)}, not '{value}'"
    if name == 'topics':
        for item in value or []:
            topic, _, msgtype = item.partition(':')
            if not topic:
                return f"topic entry '{item}' has no topic name"
            if msgtype:
                try:
                    normalise_type_name(msgtype)
                except ValueError as err:
                    return str(err)
    return None


def default_output() -> Path:
    return Path(datetime.now().strftime('rosbag2_%Y_%m_%d-%H_%M_%S'))


class RecordNode(Node):
    """Subscribes to the chosen topics as raw bytes and writes them to one bag."""

    def __init__(self, **kwargs):
        super().__init__('record_node', **kwargs)
        params = declare_checked(self, PARAMETERS, validate)
        if not params['topics'] and not params['all']:
            raise ValueError("nothing to record: give topics or set 'all' (record --all)")
        self.add_on_set_parameters_callback(self._refuse_changes)
        self._reliability = params['reliability']
        self._depth = params['depth']
        self._all = params['all']
        self._wanted = {}  # resolved topic name -> given type or None (from the graph)
        for item in params['topics']:
            topic, _, msgtype = item.partition(':')
            self._wanted[self.resolve_topic_name(topic)] = (normalise_type_name(msgtype)
                                                            if msgtype else None)
        output = Path(params['output']) if params['output'] else default_output()
        self.writer = QueuedBagWriter(output, params['storage'])
        self._lock = threading.Lock()
        self._closed = False
        self._recording = {}
        self._refused = {}  # topic -> why it is not recorded (said once)
        self.done = threading.Event()
        self._started = time.monotonic()
        self._duration = params['duration']
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(params['discovery_period'], self._discover, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        if self._duration > 0.0:
            self.create_timer(self._duration, self.finish, clock=steady)
        self.get_logger().info(
            f"recording {'all topics' if self._all else ', '.join(self._wanted)} to "
            f"{output} ({params['storage']})")
        self._discover()

    def progress(self):
        """(seconds recorded, seconds to record); the second is 0 without a duration."""
        return time.monotonic() - self._started, self._duration

    def _discover(self):
        if self.done.is_set():
            return
        graph = dict(self.get_topic_names_and_types())
        names = [n for n in graph if n not in IGNORED_WITH_ALL] if self._all else []
        for topic in dict.fromkeys(list(self._wanted) + names):
            if topic in self._recording or topic in self._refused:
                continue
            msgtype = self._wanted.get(topic)
            if msgtype is None:
                types = graph.get(topic)
                if not types:
                    continue  # no publisher yet: look again later
                if len(types) > 1:
                    self._refuse(topic, f'it has several types ({", ".join(types)}); give one '
                                        'as TOPIC:TYPE')
                    continue
                msgtype = types[0]
            self._subscribe(topic, msgtype)

    def _subscribe(self, topic, msgtype):
        publishers = self.get_publishers_info_by_topic(topic)
        if self._wanted.get(topic) is None and not publishers:
            return
        try:
            cls = message_class(msgtype)
            with self._lock:
                self.writer.add_topic(topic, msgtype, [
                    offered_qos(p.qos_profile.reliability, p.qos_profile.durability,
                                p.qos_profile.history, p.qos_profile.depth)
                    for p in publishers])
        except (UnknownTypeError, BagError) as err:
            self._refuse(topic, f'{msgtype}: {err}')
            return
        qos = self._qos(publishers)
        self._recording[topic] = self.create_subscription(
            cls, topic, lambda data, t=topic: self._write(t, data), qos, raw=True)
        self.get_logger().info(
            f'recording {topic} ({msgtype}, {qos.reliability.name.lower()}, '
            f'{qos.durability.name.lower()})')

    def _qos(self, publishers):
        profiles = [p.qos_profile for p in publishers]
        if self._reliability == 'reliable':
            reliability = ReliabilityPolicy.RELIABLE
        elif self._reliability == 'best_effort' or not profiles or any(
                p.reliability == ReliabilityPolicy.BEST_EFFORT for p in profiles):
            # Best effort matches any publisher, also one that has not appeared yet.
            reliability = ReliabilityPolicy.BEST_EFFORT
        else:
            reliability = ReliabilityPolicy.RELIABLE
        latched = bool(profiles) and all(
            p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in profiles)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._depth,
                          reliability=reliability,
                          durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                      else DurabilityPolicy.VOLATILE))

    def _refuse(self, topic, why):
        self._refused[topic] = why
        self.get_logger().warn(f'not recording {topic}: {why}')

    def _write(self, topic, data):
        stamp = self.get_clock().now().nanoseconds
        with self._lock:
            if not self._closed:
                self.writer.write(topic, stamp, data)

    def finish(self):
        """Close the bag (writes metadata.yaml); later messages are dropped. Safe twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            counts = self.writer.counts
            try:
                self.writer.close()
                summary = (f'wrote {sum(counts.values())} messages on {len(counts)} topics to '
                           f'{self.writer.path}'
                           + ''.join(f', {t} {n}' for t, n in counts.items()))
            except BagError as err:
                summary = f'{err}; the bag holds what was written before'
            if self.context.ok():
                self.get_logger().info(summary)
            else:  # Ctrl-C has already shut rclpy down, and its logger with it
                print(f'record: {summary}', file=sys.stderr)
            self.done.set()

    def _refuse_changes(self, params):
        return SetParametersResult(
            successful=False,
            reason='record parameters are read at start-up; start a new recording instead')

    def _publish_diagnostics(self):
        status = DiagnosticStatus(name=f'{self.get_name()}: bag recording',
                                  hardware_id=str(self.writer.path))
        if self.writer.error is not None:
            status.level, status.message = DiagnosticStatus.ERROR, str(self.writer.error)
        elif self._refused:
            status.level = DiagnosticStatus.WARN
            status.message = f'{len(self._refused)} topics not recorded'
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'finished' if self._closed else 'recording'
        status.values = [KeyValue(key=t, value=str(n)) for t, n in self.writer.counts.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(msg)

    def destroy_node(self):
        self.finish()
        return super().destroy_node()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='record',
        description='Record topics to a rosbag2 bag (.mcap by default, or .db3) without '
                    'rosbag2. Stops on Ctrl-C or after --duration; the bag is always closed '
                    'properly. ROS arguments go after --ros-args.')
    parser.add_argument('topics', nargs='*', metavar='TOPIC[:TYPE]',
                        help='topics to record; the type (e.g. sensor_msgs/msg/Image) is '
                             'taken from the graph unless given')
    parser.add_argument('-a', '--all', action='store_true',
                        help='record every topic (except /rosout, /parameter_events)')
    parser.add_argument('-o', '--output', default='',
                        help='bag folder to create (default: rosbag2_<date>-<time>)')
    parser.add_argument('-s', '--storage', choices=STORAGE_CHOICES, default='mcap',
                        help='mcap (default) or sqlite3 (.db3)')
    parser.add_argument('-d', '--duration', type=float, default=0.0, metavar='S',
                        help='stop after S seconds (default: until Ctrl-C)')
    parser.add_argument('--reliability', choices=RELIABILITY_CHOICES, default='auto',
                        help='subscription reliability (default auto: follow the publishers)')
    parser.add_argument('--depth', type=int, default=100, help='queue depth (default 100)')
    options = parser.parse_args(argv)
    if not options.topics and not options.all:
        parser.error('give the topics to record, or --all')
    return options


def main(args=None):
    argv = sys.argv if args is None else args
    options = parse_args(remove_ros_args(argv)[1:])
    overrides = [
        Parameter('all', value=options.all), Parameter('output', value=options.output),
        Parameter('storage', value=options.storage),
        Parameter('duration', value=options.duration),
        Parameter('reliability', value=options.reliability),
        Parameter('depth', value=options.depth)]
    if options.topics:
        overrides.append(Parameter('topics', value=options.topics))
    # Jazzy's rclpy.init() is not a context manager yet: shut down in `finally`.
    rclpy.init(args=argv)
    try:
        node = RecordNode(parameter_overrides=overrides)
        spin = BackgroundSpin(node)
        try:
            _wait(node)
        finally:
            spin.stop()
            node.destroy_node()  # closes the bag, also on Ctrl-C
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (BagError, ValueError) as err:
        print(f'record: error: {err}', file=sys.stderr)
        return 2
    finally:
        rclpy.try_shutdown()
    return 0


def _wait(node):
    """Until the duration is over, or Ctrl-C / SIGTERM (which rclpy turns into a shutdown)."""
    _, total = node.progress()
    bar = None
    if total > 0.0:
        from tqdm import tqdm
        bar = tqdm(total=round(total, 1), unit='s', desc='record')
    while not node.done.wait(0.2) and node.context.ok():
        if bar is not None:
            bar.n = round(min(node.progress()[0], total), 1)
            bar.refresh()
    if bar is not None:
        bar.close()


if __name__ == '__main__':
    sys.exit(main())
