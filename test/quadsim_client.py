"""
A client that behaves like the Unity simulator's socket.io client, for the bridge's tests.

It follows the last list of ../shared/docs/unity-quadsim-protocol.md exactly: a raw websocket
to /socket.io/?EIO=4&transport=websocket; it reads `0{...}`, never sends `40` and ignores any
`40`; it sends `42["sensor_frame",{...}]` (string values) at 5 Hz; it answers every `2` with
`3`; it sends `2` every 0.33 s until one goes unanswered, then stops pinging; it accepts only
1- or 2-element `42` events whose payload is an object (anything else is recorded as an error,
where the real client would throw); on exit it sends `41`, then `1`.
"""

import base64
import json
import threading
import time

import cv2
import numpy as np
import websocket


def encode_image(pixels_rgb: np.ndarray, fmt: str = '.png') -> str:
    """Encode an RGB (or single-channel) array as base64 JPEG/PNG text, as the simulator does."""
    pixels = pixels_rgb[:, :, ::-1] if pixels_rgb.ndim == 3 else pixels_rgb
    ok, data = cv2.imencode(fmt, np.ascontiguousarray(pixels))
    assert ok, f'OpenCV could not encode {fmt}'
    return base64.b64encode(data.tobytes()).decode('ascii')


def pose_text(x, y, z, roll, pitch, yaw) -> str:
    """Format the simulator's pose string: 4 decimals, degrees."""
    return ','.join(f'{v:.4f}' for v in (x, y, z, roll, pitch, yaw))


def make_frame(timestamp='1504814505.23149', rgb=None, depth_units=None,
               pose=(0, 0, 10, 0, 0, 0), gimbal_pose=(0, 0, 10, 0, 0, 0), size=256,
               rgb_format='.png') -> dict:
    """Build a sensor_frame payload; depth is the 0..255 value put in R = G = B of a PNG."""
    if rgb is None:
        rgb = np.zeros((size, size, 3), np.uint8)
    if depth_units is None:
        depth_units = np.full((size, size), 51, np.uint8)  # 10 m at 50/255
    depth_rgb = np.repeat(depth_units[:, :, None], 3, axis=2)
    return {'timestamp': str(timestamp), 'rgb_image': encode_image(rgb, rgb_format),
            'depth_image': encode_image(depth_rgb, '.png'), 'pose': pose_text(*pose),
            'gimbal_pose': pose_text(*gimbal_pose)}


class QuadSimClient:
    """The simulator's side of the socket: connect(), send frames, read what comes back."""

    def __init__(self, port, host='127.0.0.1', ping_interval_s=0.33, frame_rate_hz=5.0):
        self.url = f'ws://{host}:{port}/socket.io/?EIO=4&transport=websocket'
        self.ping_interval_s = ping_interval_s
        self.frame_period_s = 1.0 / frame_rate_hz
        self.sid = None
        self.connected_at = None
        self.events = []            # (name, payload) of every well-formed `42` received
        self.errors = []            # `42` packets the real client would throw on
        self.heartbeats = []        # monotonic times of every `2` or `3` received
        self.namespace_connects = 0  # `40...` received (ignored, as the real client does)
        self.pings_sent = 0
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._awaiting_pong = False
        self._ws = None
        self._threads = []

    def connect(self, timeout=5.0):
        self._ws = websocket.create_connection(self.url, timeout=timeout,
                                               enable_multithread=True)
        opening = self._ws.recv()
        if not opening.startswith('0'):
            raise ConnectionError(f'expected the Engine.IO open packet, got {opening[:60]!r}')
        self.sid = json.loads(opening[1:])['sid']
        self.connected_at = time.monotonic()
        self._ws.settimeout(0.2)
        self._start(self._read)
        self._start(self._ping)
        return self

    def start_frames(self, make_payload):
        """Send make_payload() as a sensor_frame at the frame rate until close()."""
        self._start(self._frames, make_payload)

    def send_event(self, name, payload):
        self.send_raw('42' + json.dumps([name, payload]))

    def send_raw(self, text):
        self._ws.send(text)

    def events_named(self, name):
        with self._lock:
            return [payload for event, payload in self.events if event == name]

    def close(self):
        """Quit as the simulator does: `41`, then `1`, then close the socket."""
        self._stop.set()
        if not self.closed.is_set():
            try:
                self._ws.send('41')
                self._ws.send('1')
            except (OSError, websocket.WebSocketException):
                pass
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._ws.close()
        self.closed.set()

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read(self):
        while not self._stop.is_set():
            try:
                message = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                break
            if not message:  # the server closed the websocket
                break
            self._handle(message)
        self.closed.set()

    def _handle(self, message):
        if message == '2':
            self.heartbeats.append(time.monotonic())
            self._ws.send('3')
        elif message == '3':
            self.heartbeats.append(time.monotonic())
            self._awaiting_pong = False
        elif message.startswith('40'):
            self.namespace_connects += 1
        elif message.startswith('42'):
            try:
                packet = json.loads(message[2:])
                valid = (isinstance(packet, list) and len(packet) in (1, 2)
                         and (len(packet) == 1 or isinstance(packet[1], dict)))
            except ValueError:
                valid = False
            with self._lock:
                if valid:
                    self.events.append((packet[0], packet[1] if len(packet) == 2 else None))
                else:
                    self.errors.append(message)
        elif message in ('1', '41'):
            self.closed.set()

    def _ping(self):
        while not self._stop.wait(self.ping_interval_s):
            if self._awaiting_pong:
                return  # the real client's ping thread stalls silently here
            self._awaiting_pong = True
            self.pings_sent += 1
            try:
                self._ws.send('2')
            except (OSError, websocket.WebSocketException):
                return

    def _frames(self, make_payload):
        while not self._stop.wait(self.frame_period_s):
            try:
                self.send_event('sensor_frame', make_payload())
            except (OSError, websocket.WebSocketException):
                return
