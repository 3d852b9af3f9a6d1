"""unity_bridge end to end: real rclpy, the real socket.io server, a client like the simulator's.

Each bridge listens on a free port the system picks (port 0), so parallel runs never collide.
"""

import json
import math

from conftest import spin_until
from followme_common.image_msgs import image_to_array
import numpy as np
import pytest
from quadsim_client import make_frame, QuadSimClient

pytestmark = pytest.mark.ros

STAMP = '1504814505.23149'
STAMP_SEC, STAMP_NANOSEC = 1504814505, 231490000


@pytest.fixture
def bridge(executor):
    """Start a bridge with parameter overrides; clients made with connect() close at the end."""
    from followme_control.unity_bridge.node import UnityBridgeNode
    from rclpy.parameter import Parameter
    clients = []

    class Bridge:
        def start(self, **params):
            params.setdefault('port', 0)
            params.setdefault('diagnostics_period', 0.2)
            self.node = UnityBridgeNode(parameter_overrides=[
                Parameter(name, value=value) for name, value in params.items()])
            executor.add_node(self.node)
            self.port = self.node.bound_address[1]
            return self

        def connect(self):
            client = QuadSimClient(self.port).connect()
            clients.append(client)
            return client

        def count(self, name):
            return self.node.counts.get(name, 0)

        def wait_count(self, name, value, timeout=10.0):
            return spin_until(executor, lambda: self.count(name) >= value, timeout)

    yield Bridge()
    for client in clients:
        client.close()
        assert client.errors == [], 'the bridge sent events the real client would throw on'


def _listen(executor, node, msg_type, topic, received, qos=10):
    sub_node = _helper(executor, node)
    sub_node.create_subscription(msg_type, topic, received.append, qos)


def _helper(executor, node):
    if not hasattr(node, 'test_helper'):
        import rclpy
        node.test_helper = rclpy.create_node(f'unity_bridge_test_{id(node)}')
        executor.add_node(node.test_helper)
    return node.test_helper


def _hero_pose(node, stamp_sec, stamp_nanosec, point, frame_id='camera_optical_frame'):
    from geometry_msgs.msg import PoseStamped
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_sec, stamp_nanosec
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = point
    msg.pose.orientation.w = 1.0
    return msg


def test_one_frame_arrives_as_ros_messages(executor, bridge):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image
    b = bridge.start()
    topics = {'image': Image, 'depth': Image, 'camera_info': CameraInfo,
              'drone_pose': PoseStamped, 'camera_pose': PoseStamped}
    received = {topic: [] for topic in topics}
    for topic, msg_type in topics.items():
        _listen(executor, b.node, msg_type, topic, received[topic])
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    units = np.arange(256 * 256, dtype=np.uint32).reshape(256, 256).astype(np.uint8)
    units[5, 250] = 255
    client = b.connect()
    # Discovery takes a moment: send until the first image gets through.
    assert spin_until(executor, lambda: client.send_event('sensor_frame', make_frame(
        timestamp=STAMP, rgb=rgb, depth_units=units, pose=(1, 2, 10, 0, 0, 90),
        gimbal_pose=(1, 2, 10.5, 0, 30, 90))) or all(received.values()), timeout=15)

    image, depth, info = received['image'][0], received['depth'][0], received['camera_info'][0]
    assert image.encoding == 'rgb8' and np.array_equal(image_to_array(image), rgb)
    assert depth.encoding == '32FC1'
    metres = image_to_array(depth)
    assert metres == pytest.approx(units.astype(np.float32) * np.float32(50 / 255))
    assert metres[5, 250] == pytest.approx(50.0)
    assert (info.width, info.height) == (256, 256)
    assert list(info.k) == pytest.approx([256, 0, 127.5, 0, 256, 127.5, 0, 0, 1])
    for msg in (image, depth, info):
        assert msg.header.frame_id == 'camera_optical_frame'
    for msg in (image, depth, info, received['drone_pose'][0], received['camera_pose'][0]):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (STAMP_SEC, STAMP_NANOSEC)
    drone, camera = received['drone_pose'][0], received['camera_pose'][0]
    assert drone.header.frame_id == camera.header.frame_id == 'world'
    assert (drone.pose.position.x, drone.pose.position.y, drone.pose.position.z) == (1, 2, 10)
    s = math.sin(math.pi / 4)
    q = drone.pose.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0, 0, s, s))
    # The camera pose is the optical frame's: its z axis (view direction) is yaw 90, pitch 30
    # down, i.e. world (0, cos 30, -sin 30).
    q = camera.pose.orientation
    z_axis = [2 * (q.x * q.z + q.y * q.w), 2 * (q.y * q.z - q.x * q.w),
              1 - 2 * (q.x * q.x + q.y * q.y)]
    assert z_axis == pytest.approx([0, math.cos(math.radians(30)), -0.5], abs=1e-9)
    assert camera.pose.position.z == 10.5


def test_hero_pose_comes_back_as_world_coordinates(executor, bridge):
    from geometry_msgs.msg import PoseStamped
    b = bridge.start()
    publisher = _helper(executor, b.node).create_publisher(PoseStamped, 'hero_pose', 10)
    client = b.connect()
    # Camera at (1, 2, 10), level, yaw 90: it looks along world +y and its right is world +x.
    client.send_event('sensor_frame', make_frame(timestamp=STAMP,
                                                 gimbal_pose=(1, 2, 10, 0, 0, 90)))
    assert b.wait_count('frames_published', 1)
    # 4 m ahead, 0.5 m right, 0.2 m down -> world (1 + 0.5, 2 + 4, 10 - 0.2).
    hero = _hero_pose(b.node, STAMP_SEC, STAMP_NANOSEC, (0.5, 0.2, 4.0))
    assert spin_until(executor, lambda: publisher.publish(hero) or client.events_named(
        'object_detected'), timeout=15)
    assert client.events_named('object_detected')[0]['coords'] == pytest.approx([1.5, 6.0, 9.8])
    assert spin_until(executor, lambda: client.events_named('create_box_marker'))
    marker = client.events_named('create_box_marker')[0]
    assert marker['pose'] == pytest.approx([1.5, 6.0, 9.8, 0, 0, 0])
    assert marker['dimensions'] == [0.7, 0.7, 2.0] and marker['duration'] == 0.4

    # A hero pose for a frame the bridge never saw, or in another frame, is dropped.
    publisher.publish(_hero_pose(b.node, STAMP_SEC + 1, 0, (0.5, 0.2, 4.0)))
    assert b.wait_count('hero_pose_unmatched', 1)
    publisher.publish(_hero_pose(b.node, STAMP_SEC, STAMP_NANOSEC, (0, 0, 4), 'base_link'))
    assert b.wait_count('hero_pose_invalid', 1)
    publisher.publish(_hero_pose(b.node, STAMP_SEC, STAMP_NANOSEC, (math.nan, 0, 4)))
    assert b.wait_count('hero_pose_invalid', 2)


def test_object_lost_after_more_than_six_frames_without_the_hero(executor, bridge):
    from geometry_msgs.msg import PoseStamped
    b = bridge.start(lost_after_frames=6)
    publisher = _helper(executor, b.node).create_publisher(PoseStamped, 'hero_pose', 10)
    client = b.connect()

    def frame(i):
        client.send_event('sensor_frame', make_frame(timestamp=f'{1000 + i}.5'))
        assert b.wait_count('frames_published', i)

    frame(1)
    hero = _hero_pose(b.node, 1001, 500_000_000, (0, 0, 5))
    assert spin_until(executor, lambda: publisher.publish(hero) or b.node._tracker.following,
                      timeout=15)
    for i in range(2, 8):  # six frames in a row without the hero: still following
        frame(i)
    assert b.count('object_lost_sent') == 0
    frame(8)  # the seventh
    assert b.count('object_lost_sent') == 1
    assert spin_until(executor, lambda: client.events_named('object_lost'))
    assert client.events_named('object_lost') == [{'data': ''}]
    frame(9)
    assert b.count('object_lost_sent') == 1  # once per loss


def test_every_bad_input_is_counted_and_the_link_survives(executor, bridge):
    from diagnostic_msgs.msg import DiagnosticArray
    b = bridge.start()
    diagnostics = []
    _listen(executor, b.node, DiagnosticArray, '/diagnostics', diagnostics)
    client = b.connect()
    good = make_frame(timestamp=STAMP)
    bad_inputs = [
        ('bad_base64', json.dumps(['sensor_frame', {**good, 'rgb_image': '%%%'}])),
        ('not_jpeg_or_png', json.dumps(['sensor_frame', {
            **good, 'depth_image': 'R0lGODlhAQABAAAAACw='}])),  # a GIF
        ('bad_image', json.dumps(['sensor_frame', {**good, 'rgb_image': 'iVBORw0KGgoAAAA='}])),
        ('wrong_size', json.dumps(['sensor_frame', make_frame(size=128)])),
        ('bad_pose', json.dumps(['sensor_frame', {**good, 'pose': '1,2,three,4,5,6'}])),
        ('bad_pose', json.dumps(['sensor_frame', {**good, 'gimbal_pose': '1,2,3'}])),
        ('bad_timestamp', json.dumps(['sensor_frame', {**good, 'timestamp': 'now'}])),
        ('missing_field', json.dumps(['sensor_frame', {
            k: v for k, v in good.items() if k != 'depth_image'}])),
        ('missing_field', json.dumps(['sensor_frame', 'not an object'])),
        ('missing_field', json.dumps(['sensor_frame'])),
        ('unknown_events', json.dumps(['manual_override', {'speed': '9'}])),
        ('malformed_packets', '["sensor_frame", {unquoted'),
    ]
    expected = {}
    for kind, body in bad_inputs:
        expected[kind] = expected.get(kind, 0) + 1
        client.send_raw('42' + body)
        assert b.wait_count(kind, expected[kind]), f'{kind} was not counted'
    assert b.count('frames_published') == 0
    client.send_event('sensor_frame', good)  # the same connection still works
    assert b.wait_count('frames_published', 1)
    assert not client.closed.is_set() and b.count('disconnections') == 0

    def reported():
        values = {kv.key: kv.value for msg in diagnostics[-1:] for kv in msg.status[0].values}
        return all(values.get(kind) == str(n) for kind, n in expected.items())
    assert spin_until(executor, reported, timeout=15)


def test_payload_over_the_cap_closes_the_link_and_a_new_one_works(executor, bridge):
    b = bridge.start(max_payload_bytes=100_000)
    client = b.connect()
    client.send_event('sensor_frame', {**make_frame(), 'padding': 'x' * 150_000})
    assert b.wait_count('payload_too_large', 1)
    assert client.closed.wait(5.0)
    assert b.wait_count('disconnections', 1)
    again = b.connect()
    again.send_event('sensor_frame', make_frame())
    assert b.wait_count('frames_published', 1)


def test_disconnect_then_reconnect(executor, bridge):
    b = bridge.start()
    first = b.connect()
    first.send_event('sensor_frame', make_frame(timestamp='100.0'))
    assert b.wait_count('frames_published', 1)
    first.close()  # `41`, `1`, as the simulator quits
    assert b.wait_count('disconnections', 1)
    assert not b.node.server.connected
    second = b.connect()
    second.send_event('sensor_frame', make_frame(timestamp='101.0'))
    assert b.wait_count('frames_published', 2)
    assert b.count('connections') == 2


def test_a_second_simulator_is_refused_while_one_is_connected(executor, bridge):
    import websocket
    b = bridge.start()
    first = b.connect()
    first.send_event('sensor_frame', make_frame(timestamp='100.0'))
    assert b.wait_count('frames_published', 1)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        QuadSimClient(b.port).connect()
    assert refused.value.status_code == 401
    assert b.count('rejected_connections') == 1
    first.send_event('sensor_frame', make_frame(timestamp='101.0'))
    assert b.wait_count('frames_published', 2)


def test_heartbeat_arrives_well_within_the_simulators_3_s_watchdog(executor, bridge):
    b = bridge.start()
    client = b.connect()
    assert spin_until(executor, lambda: len(client.heartbeats) >= 4, timeout=15)
    gaps = np.diff([client.connected_at] + client.heartbeats)
    assert gaps.max() < 3.0, f'heartbeat gaps {gaps} would drop the quad out of Follow'
    assert not client.closed.is_set()


def test_frames_at_5_hz_keep_flowing(executor, bridge):
    b = bridge.start()
    client = b.connect()
    counter = iter(range(10 ** 6))
    client.start_frames(lambda: make_frame(timestamp=f'{200 + next(counter) * 0.2:.3f}'))
    assert b.wait_count('frames_published', 8, timeout=20)
    assert b.count('frames_received') == b.count('frames_published')


def test_a_standard_socketio_client_works_too(executor, bridge):
    import socketio
    from geometry_msgs.msg import PoseStamped
    b = bridge.start()
    publisher = _helper(executor, b.node).create_publisher(PoseStamped, 'hero_pose', 10)
    for round_, transports in enumerate((['websocket'], ['polling', 'websocket']), start=1):
        client = socketio.Client()
        detected, connects = [], []
        client.on('object_detected', detected.append)
        client.on('connect', lambda: connects.append(True))
        client.connect(f'http://127.0.0.1:{b.port}', transports=transports, wait_timeout=10)
        try:
            client.emit('sensor_frame', make_frame(timestamp=STAMP))
            frames = b.count('frames_published') + 1
            assert b.wait_count('frames_published', frames)
            hero = _hero_pose(b.node, STAMP_SEC, STAMP_NANOSEC, (0.0, 0.0, 4.0))
            assert spin_until(executor, lambda: publisher.publish(hero) or detected, timeout=15)
            assert detected[0]['coords'] == pytest.approx([4.0, 0.0, 10.0])
            assert connects == [True]  # the server's early `40` and the client's own: one join
        finally:
            client.disconnect()
        assert b.wait_count('disconnections', round_)


def test_velocity_mode_sends_the_commanded_point(executor, bridge):
    from geometry_msgs.msg import Twist
    b = bridge.start(mode='velocity', velocity_horizon_s=2.0)
    publisher = _helper(executor, b.node).create_publisher(Twist, 'cmd_vel', 10)
    client = b.connect()
    client.send_event('sensor_frame', make_frame(pose=(1, 2, 10, 0, 0, 90)))
    assert b.wait_count('frames_published', 1)
    command = Twist()
    command.linear.x = 1.0  # forward, i.e. world +y at yaw 90
    assert spin_until(executor, lambda: publisher.publish(command) or client.events_named(
        'object_detected'), timeout=15)
    assert client.events_named('object_detected')[0]['coords'] == pytest.approx([1, 4, 10])
    command.linear.y = math.nan
    publisher.publish(command)
    assert b.wait_count('cmd_vel_invalid', 1)


def test_a_bad_parameter_is_refused_at_start(ros):
    from followme_control.unity_bridge.node import UnityBridgeNode
    from rclpy.exceptions import ParameterException
    from rclpy.parameter import Parameter
    with pytest.raises(ParameterException, match='mode'):
        UnityBridgeNode(parameter_overrides=[Parameter('mode', value='sideways'),
                                             Parameter('port', value=0)])


def test_a_taken_port_is_a_clear_start_up_error(executor, bridge):
    from followme_control.unity_bridge.node import UnityBridgeNode
    from rclpy.parameter import Parameter
    b = bridge.start()
    with pytest.raises(RuntimeError, match='cannot listen on 127.0.0.1'):
        UnityBridgeNode(parameter_overrides=[Parameter('port', value=b.port)])


def test_a_browser_page_from_another_origin_is_refused(executor, bridge):
    import websocket
    b = bridge.start()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f'ws://127.0.0.1:{b.port}/socket.io/?EIO=4&transport=websocket', timeout=5,
            header=['Origin: http://attacker.example'])
    assert refused.value.status_code == 400
    assert b.count('connections') == 0


def test_the_slot_is_free_when_the_disconnect_is_announced():
    # The simulator quits with `41` (leave '/'), then closes its Engine.IO session. One that
    # reconnects the moment its disconnect is reported must not be refused (HTTP 401, "one
    # simulator at a time"), and a session that left may not take the slot back.
    import threading
    import time
    from followme_control.unity_bridge.server import QuadSimServer, ServerListener

    class Recorder(ServerListener):
        def __init__(self):
            self.slot_at_disconnect = []
            self.disconnected = threading.Event()
            self.problems = []

        def on_disconnect(self, sid, reason):
            self.slot_at_disconnect.append(server.sio.client_eio_sid)
            self.disconnected.set()

        def on_problem(self, kind, detail):
            self.problems.append(kind)

    def wait_until(condition, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        return condition()

    recorder = Recorder()
    server = QuadSimServer(recorder, port=0)
    server.start()
    first = QuadSimClient(server.address[1])
    second = QuadSimClient(server.address[1])
    try:
        first.connect()
        first._ws.send('41')            # leaves '/', its Engine.IO session still open
        assert recorder.disconnected.wait(10.0)
        assert recorder.slot_at_disconnect == [None]
        second.connect()
        assert wait_until(lambda: server.sio.client_eio_sid == second.sid)
        first._ws.send('40')            # asks back in: refused, the slot stays the second's
        assert wait_until(lambda: recorder.problems == ['rejected_connections'])
        assert server.sio.client_eio_sid == second.sid and server.connected
    finally:
        second.close()
        first.close()
        server.close()
