"""
replay: publish a rosbag2 bag's messages on their topics with the original timing.

Our `ros2 bag play` for machines without rosbag2; it reads bags from `record` and from
`ros2 bag record` (.mcap or .db3). The ReplayNode follows the runner protocol: `done` (a
threading.Event set when a non-looping replay ends) and `progress()`.
"""

import argparse
import sys
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common.bags.msgtypes import message_class, UnknownTypeError
from followme_common.bags.playback import Playback
from followme_common.bags.spinning import BackgroundSpin
from followme_common.bags.storage import BagError, BagReader
from followme_common.node_params import declare_checked
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, SetParametersResult
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.utilities import remove_ros_args
from rosgraph_msgs.msg import Clock

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
# Read once at start-up; only `rate` can change while playing.
START_ONLY = ('bag', 'loop', 'start_offset', 'delay', 'topics', 'clock', 'clock_frequency',
              'reliability', 'depth')


def _float_range(low, high):
    return [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]


PARAMETERS = {
    # name: (default, description, descriptor extras)
    'bag': ('', 'bag folder (with metadata.yaml) or .mcap/.db3 file to play', {}),
    'rate': (1.0, 'playback speed factor (2.0 = twice as fast); can change while playing',
             {'floating_point_range': _float_range(0.01, 100.0)}),
    'loop': (False, 'start again at the start offset after the last message', {}),
    'start_offset': (0.0, 'seconds of bag time to skip at the start',
                     {'floating_point_range': _float_range(0.0, 1e6)}),
    'delay': (0.5, 'seconds to wait before the first message, so subscribers can connect',
              {'floating_point_range': _float_range(0.0, 60.0)}),
    'topics': (Parameter.Type.STRING_ARRAY, 'topics to play (empty: all)', {}),
    'clock': (True, 'publish the bag time on /clock (for use_sim_time nodes)', {}),
    'clock_frequency': (100.0, 'how often /clock ticks between messages, Hz',
                        {'floating_point_range': _float_range(1.0, 1000.0)}),
    'reliability': ('reliable', "publisher reliability: 'reliable' (matches every "
                    "subscriber) or 'best_effort'", {}),
    'depth': (10, 'publisher queue depth',
              {'integer_range': [IntegerRange(from_value=1, to_value=1000, step=1)]}),
}


def validate(name, value):
    """Why a parameter value is refused, or None when it is fine."""
    if name == 'reliability' and value not in RELIABILITY:
        return f"reliability must be one of {', '.join(RELIABILITY)}, not '{value}'"
    if name == 'rate' and not value > 0.0:
        return f'rate must be > 0, not {value}'
    return None


class ReplayNode(Node):
    """Publishes one bag, in a playback thread, with /clock and diagnostics."""

    def __init__(self, **kwargs):
        super().__init__('replay_node', **kwargs)
        params = declare_checked(self, PARAMETERS, validate)
        if not params['bag']:
            raise ValueError("no bag given: set the 'bag' parameter (replay BAG)")
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.counts = {'published': 0, 'skipped_corrupt': 0}
        self.skipped_topics = {}  # topic -> why it is not played
        self.reader = BagReader(params['bag'])
        for note in self.reader.notes:
            self.get_logger().warn(note)
        self._topic_publishers = self._make_publishers(params)
        self._clock_pub = (self.create_publisher(Clock, '/clock', 10)
                           if params['clock'] else None)
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.playback = Playback(
            self.reader, self._publish, self._publish_clock if params['clock'] else None,
            topics=set(self._topic_publishers), rate=params['rate'], loop=params['loop'],
            start_offset=params['start_offset'], delay=params['delay'],
            clock_period=1.0 / params['clock_frequency'], pass_done=self._pass_done)
        self.get_logger().info(
            f"playing {params['bag']}: {len(self._topic_publishers)} topics, "
            f'{self.playback.progress()[1]:.1f} s at rate {params["rate"]}'
            f"{', looping' if params['loop'] else ''}")
        self.create_timer(1.0, self._publish_diagnostics)
        self.done = threading.Event()
        self._stop = threading.Event()
        self._reported_errors = 0
        self._thread = threading.Thread(target=self._play, name='replay', daemon=True)
        self._thread.start()

    def _make_publishers(self, params):
        wanted = set(params['topics'])
        topics = [t for t in self.reader.topics if not wanted or t.name in wanted]
        missing = wanted - {t.name for t in self.reader.topics}
        if missing:
            self.get_logger().warn(f"topics not in the bag: {', '.join(sorted(missing))} "
                                   f"(it has: {', '.join(t.name for t in self.reader.topics)})")
        publishers = {}
        if params['clock'] and any(t.name == '/clock' for t in topics):
            topics = [t for t in topics if t.name != '/clock']
            self.get_logger().info('not replaying the recorded /clock: replay publishes the '
                                   'bag time there itself (clock:=false / --no-clock plays the '
                                   'recorded one)')
        for topic in topics:
            try:
                cls = message_class(topic.msgtype)
            except UnknownTypeError as err:
                self.skipped_topics[topic.name] = f'{topic.msgtype}: {err}'
                continue
            qos = QoSProfile(depth=params['depth'],
                             reliability=RELIABILITY[params['reliability']],
                             durability=(DurabilityPolicy.TRANSIENT_LOCAL if topic.transient_local
                                         else DurabilityPolicy.VOLATILE))
            publishers[topic.name] = (cls, self.create_publisher(cls, topic.name, qos))
        for name, why in self.skipped_topics.items():
            self.get_logger().warn(f'skipping {name}, unknown message type {why}')
        if not publishers:
            raise BagError(f'{self.reader.path}: nothing to play (no topic with a known type'
                           f"{' among ' + ', '.join(sorted(wanted)) if wanted else ''})")
        return publishers

    def progress(self):
        return self.playback.progress()

    def _play(self):
        try:
            self.playback.run(self._stop)
        except Exception as err:  # the thread must always set done, and say why it ended
            self.get_logger().error(f'replay stopped: {err}')
        finally:
            self._pass_done(self.playback.passes)
            self.done.set()

    def _publish(self, message):
        cls, publisher = self._topic_publishers[message.topic]
        try:
            # Check the bytes decode as this type: damaged data must not reach subscribers.
            deserialize_message(message.data, cls)
        except Exception as err:  # rclpy raises whatever the C type support reports
            self.counts['skipped_corrupt'] += 1
            self.get_logger().warn(
                f'skipping a damaged {message.topic} message at bag time '
                f'{message.timestamp / 1e9:.3f} s: {err}', throttle_duration_sec=2.0)
            return
        publisher.publish(message.data)
        self.counts['published'] += 1

    def _publish_clock(self, bag_ns):
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
        self._clock_pub.publish(msg)

    def _pass_done(self, passes):
        for error in self.reader.read_errors[self._reported_errors:]:
            self.get_logger().error(error)
        self._reported_errors = len(self.reader.read_errors)

    def _on_set_parameters(self, params):
        for param in params:
            if param.name in START_ONLY:
                return SetParametersResult(
                    successful=False,
                    reason=f'{param.name} is read at start-up; restart replay to change it')
            reason = validate(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for param in params:
            if param.name == 'rate':
                self.playback.set_rate(param.value)
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self):
        status = DiagnosticStatus(name=f'{self.get_name()}: bag replay',
                                  hardware_id=str(self.reader.path))
        problems = bool(self.skipped_topics or self.counts['skipped_corrupt']
                        or self.reader.read_errors)
        status.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
        status.message = 'skipping unreadable data' if problems else 'playing'
        played, total = self.progress()
        values = dict(self.counts, passes=self.playback.passes,
                      skipped_topics=len(self.skipped_topics), read_errors=len(
                          self.reader.read_errors), played_s=f'{played:.2f}',
                      total_s=f'{total:.2f}')
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(msg)

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.reader.close()
        return super().destroy_node()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='replay',
        description='Publish a rosbag2 bag (.mcap or .db3, from `record` or `ros2 bag record`) '
                    'on its topics with the original timing, and /clock. ROS arguments go '
                    'after --ros-args, e.g. --ros-args -r /image:=/camera/image.')
    parser.add_argument('bag', help='bag folder (with metadata.yaml) or .mcap/.db3 file')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor (default 1.0)')
    parser.add_argument('--loop', action='store_true', help='play again and again')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='S',
                        help='skip the first S seconds of the bag')
    parser.add_argument('--delay', type=float, default=0.5, metavar='S',
                        help='wait S seconds before the first message (default 0.5)')
    parser.add_argument('--topics', nargs='+', default=[], help='only these topics')
    parser.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    parser.add_argument('--clock-frequency', type=float, default=100.0, metavar='HZ',
                        help='/clock ticks per second between messages (default 100)')
    parser.add_argument('--reliability', choices=tuple(RELIABILITY), default='reliable',
                        help='publisher reliability (default reliable: matches everyone)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser.parse_args(argv)


def main(args=None):
    argv = sys.argv if args is None else args
    options = parse_args(remove_ros_args(argv)[1:])
    overrides = [
        Parameter('bag', value=options.bag), Parameter('rate', value=options.rate),
        Parameter('loop', value=options.loop),
        Parameter('start_offset', value=options.start_offset),
        Parameter('delay', value=options.delay), Parameter('clock', value=not options.no_clock),
        Parameter('clock_frequency', value=options.clock_frequency),
        Parameter('reliability', value=options.reliability)]
    if options.topics:
        overrides.append(Parameter('topics', value=options.topics))
    # Jazzy's rclpy.init() is not a context manager yet: shut down in `finally`.
    rclpy.init(args=argv)
    try:
        node = ReplayNode(parameter_overrides=overrides)
        spin = BackgroundSpin(node)
        try:
            _wait(node, show_progress=not (options.no_progress or options.loop))
        finally:
            spin.stop()
            node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (BagError, ValueError) as err:
        print(f'replay: error: {err}', file=sys.stderr)
        return 2
    finally:
        rclpy.try_shutdown()
    return 0


def _wait(node, show_progress):
    """Until the bag ends, or Ctrl-C / SIGTERM (which rclpy turns into a shutdown)."""
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=round(node.progress()[1], 1), unit='bag s', desc='replay')
    while not node.done.wait(0.2) and node.context.ok():
        if bar is not None:
            bar.n = round(node.progress()[0], 1)
            bar.refresh()
    if bar is not None:
        bar.n = round(node.progress()[0], 1)
        bar.close()


if __name__ == '__main__':
    sys.exit(main())
