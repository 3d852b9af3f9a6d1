"""record and replay over real rclpy and Fast DDS, with bags written by the tests."""

import os
import signal
import subprocess
import sys
import time

from bag_helpers import image_cdr, NS, START_NS, write_chatter_bag
from conftest import REPO, spin_until
import numpy as np
import pytest

pytestmark = pytest.mark.ros

# Replay waits this long before the first message, so the test's subscribers are matched.
DELAY = 1.0


class Listener:
    """Subscribes to /chatter and /clock; keeps (arrival time, payload) pairs."""

    def __init__(self, executor, topic='/chatter'):
        import rclpy
        from rclpy.qos import QoSProfile
        from rosgraph_msgs.msg import Clock
        from std_msgs.msg import String
        self.node = rclpy.create_node('bag_test_listener')
        self.messages = []
        self.clock = []
        self.node.create_subscription(String, topic, self._on_message, QoSProfile(depth=1000))
        self.node.create_subscription(
            Clock, '/clock',
            lambda m: self.clock.append(m.clock.sec * NS + m.clock.nanosec),
            QoSProfile(depth=1000))
        executor.add_node(self.node)

    def _on_message(self, msg):
        self.messages.append((time.monotonic(), msg.data))

    @property
    def texts(self):
        return [text for _, text in self.messages]

    @property
    def span(self):
        return self.messages[-1][0] - self.messages[0][0]


def start_replay(executor, bag, **params):
    from rclpy.parameter import Parameter

    from followme_common.bags.replay import ReplayNode
    values = {'bag': str(bag), 'delay': DELAY, **params}
    node = ReplayNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    executor.add_node(node)
    return node


def play_to_end(executor, node, timeout=20.0):
    assert spin_until(executor, node.done.is_set, timeout), 'replay did not finish'
    spin_until(executor, lambda: False, 0.3)  # let the last messages arrive


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_replay_keeps_order_timing_and_publishes_clock(executor, tmp_path, storage):
    bag = write_chatter_bag(tmp_path / 'bag', storage, count=11, period_s=0.1)
    listener = Listener(executor)
    node = start_replay(executor, bag)
    play_to_end(executor, node)
    assert listener.texts == [f'msg {i}' for i in range(11)]
    # The bag spans 1.0 s: replay must spread the messages out, not dump them (loose bounds).
    assert 0.8 <= listener.span <= 2.5
    clock = listener.clock
    assert clock == sorted(clock) and clock[0] >= START_NS
    assert clock[-1] == START_NS + NS, '/clock ends at the last message time'
    assert len(clock) > 30, '/clock ticks between messages, not only with them'
    assert node.counts == {'published': 11, 'skipped_corrupt': 0}


def test_recorded_clock_gives_way_to_the_replayed_one(executor, tmp_path):
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock

    def add_clock(writer):
        writer.add_topic('/clock', 'rosgraph_msgs/msg/Clock')
        stale = Clock()
        stale.clock.sec = 7  # a recorded clock far from the bag's own times
        writer.write('/clock', START_NS, serialize_message(stale))
    bag = write_chatter_bag(tmp_path / 'bag', count=3, extra=add_clock)
    listener = Listener(executor)
    node = start_replay(executor, bag)
    play_to_end(executor, node)
    assert len(listener.messages) == 3
    assert listener.clock and min(listener.clock) >= START_NS, 'only the bag time on /clock'


def test_rate_factor_speeds_up(executor, tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=11, period_s=0.2)  # 2 s of bag time
    listener = Listener(executor)
    node = start_replay(executor, bag, rate=4.0)
    play_to_end(executor, node)
    assert len(listener.messages) == 11
    assert 0.4 <= listener.span <= 1.5, 'a 2 s bag at rate 4 takes about 0.5 s'


def test_start_offset_skips_the_beginning(executor, tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=11, period_s=0.1)
    listener = Listener(executor)
    node = start_replay(executor, bag, start_offset=0.55)
    play_to_end(executor, node)
    assert listener.texts == [f'msg {i}' for i in range(6, 11)]
    assert listener.clock[0] >= START_NS + 55 * NS // 100


def test_loop_plays_again_until_stopped(executor, tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=3, period_s=0.05)
    listener = Listener(executor)
    node = start_replay(executor, bag, loop=True)
    assert spin_until(executor, lambda: len(listener.messages) >= 9, 20.0)
    assert not node.done.is_set(), 'a looping replay does not end by itself'
    assert listener.texts[:9] == ['msg 0', 'msg 1', 'msg 2'] * 3
    assert node.playback.passes >= 2
    backwards = [b < a for a, b in zip(listener.clock, listener.clock[1:])]
    assert any(backwards), '/clock goes back to the start on each pass'


def test_rate_can_change_while_playing_but_other_parameters_cannot(executor, tmp_path):
    from rclpy.parameter import Parameter
    bag = write_chatter_bag(tmp_path / 'bag', count=3)
    node = start_replay(executor, bag, loop=True)
    assert node.set_parameters([Parameter('rate', value=2.0)])[0].successful
    assert node.playback.rate == 2.0
    refused = node.set_parameters([Parameter('loop', value=False)])[0]
    assert not refused.successful and 'restart' in refused.reason
    assert not node.set_parameters([Parameter('rate', value=0.0)])[0].successful


def _tf_bag(path):
    """Write a bag as a full ROS install records it: /tf has a type not installed here."""
    from rosbags.typesys import get_typestore, Stores
    store = get_typestore(Stores.ROS2_JAZZY)
    names = store.types
    header = names['std_msgs/msg/Header'](
        stamp=names['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='map')
    transform = names['geometry_msgs/msg/TransformStamped'](
        header=header, child_frame_id='base_link',
        transform=names['geometry_msgs/msg/Transform'](
            translation=names['geometry_msgs/msg/Vector3'](x=1.0, y=0.0, z=0.0),
            rotation=names['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0)))
    tf_cdr = bytes(store.serialize_cdr(names['tf2_msgs/msg/TFMessage'](transforms=[transform]),
                                       'tf2_msgs/msg/TFMessage'))

    def add_tf(writer):
        writer.add_topic('/tf', 'tf2_msgs/msg/TFMessage')
        writer.write('/tf', START_NS, tf_cdr)
    return write_chatter_bag(path, count=3, extra=add_tf)


def test_unknown_types_are_skipped_with_the_reason(executor, tmp_path):
    pytest.importorskip('rosbags')
    if _importable('tf2_msgs.msg'):
        pytest.skip('tf2_msgs is installed here, so its type is not unknown')
    listener = Listener(executor)
    node = start_replay(executor, _tf_bag(tmp_path / 'bag'))
    play_to_end(executor, node)
    assert listener.texts == ['msg 0', 'msg 1', 'msg 2']
    assert list(node.skipped_topics) == ['/tf']
    why = node.skipped_topics['/tf']
    assert 'tf2_msgs' in why and 'not installed' in why


def test_a_bag_with_only_unknown_types_is_a_clear_error(ros, tmp_path):
    from rclpy.parameter import Parameter

    from followme_common.bags.replay import ReplayNode
    from followme_common.bags.storage import BagError
    bag = _tf_bag(tmp_path / 'bag')
    with pytest.raises(BagError, match='nothing to play'):
        ReplayNode(parameter_overrides=[Parameter('bag', value=str(bag)),
                                        Parameter('topics', value=['/tf'])])


def test_damaged_messages_are_skipped_and_counted(executor, tmp_path):
    def add_damaged(writer):
        writer.write('/chatter', START_NS + NS // 20, b'\x00\x01\x00\x00\xff\xff\xff\x7f')
    bag = write_chatter_bag(tmp_path / 'bag', count=3, extra=add_damaged)
    listener = Listener(executor)
    node = start_replay(executor, bag)
    play_to_end(executor, node)
    assert listener.texts == ['msg 0', 'msg 1', 'msg 2']
    assert node.counts == {'published': 3, 'skipped_corrupt': 1}


def test_truncated_bag_plays_what_it_can_and_says_so(executor, tmp_path):
    from followme_common.bags.storage import BagWriter
    bag = tmp_path / 'bag'
    with BagWriter(bag) as writer:  # big enough for several MCAP chunks (1 MiB each)
        writer.add_topic('/image', 'sensor_msgs/msg/Image')
        for i in range(20):
            stamp = START_NS + i * NS // 50
            writer.write('/image', stamp,
                         image_cdr(np.full((256, 256, 3), i, np.uint8), 'rgb8', stamp))
    storage_file = bag / 'bag.mcap'
    storage_file.write_bytes(storage_file.read_bytes()[:2_500_000])
    from sensor_msgs.msg import Image
    received = []
    listener = Listener(executor)
    listener.node.create_subscription(Image, '/image',
                                      lambda m: received.append(int(m.data[0])), 100)
    node = start_replay(executor, bag)
    assert any('incomplete' in note for note in node.reader.notes)
    play_to_end(executor, node)
    salvaged = node.reader.message_count
    assert 0 < salvaged < 20
    assert received == list(range(salvaged))


def test_garbage_bag_is_a_clear_error(ros, tmp_path):
    from rclpy.parameter import Parameter

    from followme_common.bags.replay import ReplayNode
    from followme_common.bags.storage import BagError
    (tmp_path / 'bag.mcap').write_bytes(b'\x89MCAP0\r\nnot really' * 10)
    with pytest.raises(BagError, match=r'cannot read bag .*bag\.mcap'):
        ReplayNode(parameter_overrides=[Parameter('bag', value=str(tmp_path / 'bag.mcap'))])


def test_record_then_replay_round_trip(executor, tmp_path):
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from followme_common.bags.record import RecordNode
    from followme_common.bags.storage import BagReader
    from followme_common.image_msgs import fill_image
    import rclpy
    talker = rclpy.create_node('bag_test_talker')
    images = talker.create_publisher(Image, 'image', qos_profile_sensor_data)  # best effort
    chatter = talker.create_publisher(String, 'chatter', 10)
    executor.add_node(talker)
    recorder = RecordNode(parameter_overrides=[
        Parameter('output', value=str(tmp_path / 'bag')),
        Parameter('topics', value=['image', 'chatter:std_msgs/msg/String'])])
    executor.add_node(recorder)
    assert spin_until(executor, lambda: images.get_subscription_count() == 1
                      and chatter.get_subscription_count() == 1)
    sent = []
    for i in range(8):
        msg = fill_image(Image(), np.full((32, 32, 3), i, np.uint8), 'rgb8')
        msg.header.stamp.sec = i
        images.publish(msg)
        chatter.publish(String(data=f'msg {i}'))
        sent.append(msg)
        spin_until(executor, lambda: False, 0.1)
    assert spin_until(executor, lambda: recorder.writer.counts.get('/chatter') == 8)
    spin_until(executor, lambda: False, 0.2)
    recorder.finish()
    assert recorder.writer.counts['/image'] >= 6, 'best effort on loopback loses little'
    executor.remove_node(recorder)
    recorder.destroy_node()
    with BagReader(tmp_path / 'bag') as reader:
        recorded_span = (reader.end_ns - reader.start_ns) / NS
        kinds = {t.name: t.msgtype for t in reader.topics}
    assert kinds == {'/chatter': 'std_msgs/msg/String', '/image': 'sensor_msgs/msg/Image'}

    listener = Listener(executor)
    replayed = []
    listener.node.create_subscription(Image, '/image', replayed.append, 100)
    node = start_replay(executor, tmp_path / 'bag')
    play_to_end(executor, node)
    assert listener.texts == [f'msg {i}' for i in range(8)]
    assert 0.8 * recorded_span <= listener.span <= recorded_span + 1.5
    by_stamp = {m.header.stamp.sec: m for m in sent}
    assert len(replayed) == recorded_count(tmp_path / 'bag', '/image')
    for msg in replayed:
        original = by_stamp[msg.header.stamp.sec]
        assert (msg.encoding, msg.height, msg.width) == ('rgb8', 32, 32)
        assert bytes(msg.data) == bytes(original.data)


def recorded_count(bag, topic):
    from followme_common.bags.storage import BagReader
    with BagReader(bag) as reader:
        return next(t.count for t in reader.topics if t.name == topic)


def _importable(module):
    import importlib
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    env['PYTHONUNBUFFERED'] = '1'
    return env


@pytest.mark.parametrize('stop_signal, storage', [(signal.SIGINT, 'sqlite3'),
                                                  (signal.SIGTERM, 'mcap')])
def test_record_command_closes_the_bag_when_stopped(executor, tmp_path, stop_signal, storage):
    import rclpy
    from std_msgs.msg import String

    from followme_common.bags.storage import BagReader
    talker = rclpy.create_node('bag_test_cli_talker')
    chatter = talker.create_publisher(String, 'chatter', 10)
    executor.add_node(talker)
    bag = tmp_path / 'cli_bag'
    process = subprocess.Popen(
        [sys.executable, '-m', 'followme_common.bags.record', 'chatter', '-o', str(bag),
         '--storage', storage],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert spin_until(executor, lambda: chatter.get_subscription_count() >= 1, 30.0), \
            'the recorder never subscribed'
        spin_until(executor, lambda: False, 1.0)  # the recorder's side of the match, too
        for i in range(5):
            chatter.publish(String(data=f'cli {i}'))
            spin_until(executor, lambda: False, 0.05)
        spin_until(executor, lambda: False, 0.5)
        process.send_signal(stop_signal)  # Ctrl-C, or what a process manager sends
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert (bag / 'metadata.yaml').is_file(), output
    assert 'wrote 5 messages' in output
    from rclpy.serialization import deserialize_message
    with BagReader(bag) as reader:
        # Wire bytes may end in CDR alignment padding that serialize_message leaves out.
        texts = [deserialize_message(m.data, String).data for m in reader.messages()]
    assert texts == [f'cli {i}' for i in range(5)]


@pytest.mark.parametrize('module', ['record', 'replay', 'export'])
def test_commands_have_help(module):
    result = subprocess.run([sys.executable, '-m', f'followme_common.bags.{module}', '--help'],
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'usage:' in result.stdout and '--' in result.stdout


def test_replay_command_plays_a_bag(executor, tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=4, period_s=0.05)
    listener = Listener(executor)
    process = subprocess.Popen(
        [sys.executable, '-m', 'followme_common.bags.replay', str(bag), '--delay', '2',
         '--no-progress'], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        assert spin_until(executor, lambda: len(listener.messages) == 4, 40.0)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert listener.texts == [f'msg {i}' for i in range(4)]


def test_replay_command_reports_a_missing_bag(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'followme_common.bags.replay', str(tmp_path / 'nope')],
        env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'does not exist' in result.stderr and str(tmp_path / 'nope') in result.stderr
