"""
The socket.io server the Unity simulator connects to (no ROS).

python-socketio 5 in threading mode, served by the standard library's WSGI server, adapted to
the simulator's 2014 socket.io client (see docs/unity_bridge.md, "Compatibility"):

- the client never sends the namespace CONNECT (`40`): every session is joined to `/` as
  soon as it opens, as socket.io 2 servers did. A standard client gets that `40` answer before
  it asks, and its own `40` for `/` is then ignored;
- the client's 3 s watchdog needs a heartbeat: Engine.IO pings every `heartbeat_s` (1 s),
  which the client answers; its own pings go unanswered, as with any Engine.IO 4 server;
- messages are capped while they are received (the websocket closes with 1009 above the cap);
- one client at a time: another one is refused (HTTP 401) while the first is connected.
"""

import functools
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
import simple_websocket
import socketio
from socketio import packet

# Engine.IO declares a client gone when it misses a pong for this long: the simulator's own
# watchdog drops Follow after the same 3 s without a heartbeat.
PING_TIMEOUT_S = 3.0
# How often a waiting websocket reader re-checks that its connection is still open.
RECEIVE_POLL_S = 0.5


class ServerListener:
    """What the server reports; the bridge node implements these. Called from server threads."""

    def on_connect(self, sid: str):
        """Report a client that joined (the simulator, or a standard socket.io client)."""

    def on_disconnect(self, sid: str, reason: str):
        """Report that the client left (closed, timed out, or dropped)."""

    def on_event(self, event: str, args: tuple):
        """Hand over an event from the client, with its arguments as decoded JSON."""

    def on_problem(self, kind: str, detail: str):
        """Report something refused; kind is a diagnostics counter name."""


class _CappedWebSocket(SimpleWebSocketWSGI):
    """Engine.IO's simple-websocket driver with the message cap applied while receiving."""

    def __init__(self, handler, server, on_too_large):
        super().__init__(handler, server, max_message_size=server.max_http_buffer_size)
        self._on_too_large = on_too_large

    def wait(self):
        # Polled with a timeout: simple-websocket 1.1.0 wakes the reader before it marks an
        # over-size connection closed, and a reader waiting without a timeout then waits forever.
        while True:
            try:
                message = self.ws.receive(timeout=RECEIVE_POLL_S)
            except simple_websocket.ConnectionClosed:
                message = None
            if message is not None:
                return message
            if not self.ws.connected:
                if self.ws.incoming_message_len > self.ws.max_message_size:
                    self._on_too_large(self.ws.incoming_message_len, self.ws.max_message_size)
                return None


class _SimulatorServer(socketio.Server):
    """socketio.Server that serves clients that never send the namespace CONNECT."""

    def __init__(self, listener: ServerListener, **kwargs):
        super().__init__(**kwargs)
        self._listener = listener
        self._lock = threading.Lock()
        self.client_eio_sid = None  # the one connected Engine.IO session, if any
        self.client_sid = None      # its socket.io session in namespace '/'

    def _handle_eio_connect(self, eio_sid, environ):
        with self._lock:
            if self.client_eio_sid is not None:
                busy = True
            else:
                busy = False
                self.client_eio_sid = eio_sid
        if busy:
            self._listener.on_problem(
                'rejected_connections',
                f"refused a second client from {environ.get('REMOTE_ADDR')}: one simulator "
                'at a time')
            return False  # Engine.IO answers HTTP 401
        super()._handle_eio_connect(eio_sid, environ)
        # Join '/' now, as socket.io 2 servers did: the simulator never asks to.
        self._handle_connect(eio_sid, '/', None)

    def _handle_eio_message(self, eio_sid, data):
        try:
            if not isinstance(data, str):
                raise ValueError('binary Engine.IO message (the simulator speaks text only)')
            pkt = self.packet_class(encoded_packet=data)
            if pkt.packet_type == packet.CONNECT and (pkt.namespace or '/') == '/':
                if self.manager.sid_from_eio_sid(eio_sid, '/') is not None:
                    return  # a standard client's own CONNECT: it was answered when it opened
                with self._lock:
                    holder = self.client_eio_sid
                if eio_sid != holder:
                    # A session that left '/' (its slot went to the next client) asks back in.
                    self._listener.on_problem(
                        'rejected_connections', 'refused a client rejoining after it left: one '
                        'simulator at a time')
                    return
            super()._handle_eio_message(eio_sid, data)
        except Exception as exc:  # a bad packet must not end the session
            self._listener.on_problem('malformed_packets',
                                      f'unreadable socket.io packet {str(data)[:60]!r}: {exc}')

    def release_slot(self, eio_sid):
        """Let the next client in if `eio_sid` holds the one slot (it left or closed)."""
        with self._lock:
            if eio_sid == self.client_eio_sid:
                self.client_eio_sid = None

    def _handle_eio_disconnect(self, eio_sid, reason):
        # Free the one slot before the disconnect is announced (the listener's count, the
        # node's log): a simulator that reconnects on hearing it must not be refused.
        self.release_slot(eio_sid)
        super()._handle_eio_disconnect(eio_sid, reason)


class _QuietRequestHandler(WSGIRequestHandler):
    def get_environ(self):
        environ = super().get_environ()
        environ['werkzeug.socket'] = self.connection  # where simple-websocket finds the socket
        return environ

    def log_message(self, *args):
        pass  # every request would be a line on stderr; the node reports what matters


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        # HTTPServer.server_bind resolves the host's full name (a DNS lookup that can hang
        # without a network); the WSGI environment needs only the address.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()


class QuadSimServer:
    """Listens for the simulator; reports through a ServerListener; emits events to it."""

    def __init__(self, listener: ServerListener, host: str = '127.0.0.1', port: int = 4567,
                 heartbeat_s: float = 1.0, max_payload_bytes: int = 4_000_000):
        self._listener = listener
        self.sio = _SimulatorServer(
            listener, async_mode='threading', async_handlers=False,
            ping_interval=heartbeat_s, ping_timeout=PING_TIMEOUT_S,
            max_http_buffer_size=max_payload_bytes, logger=False, engineio_logger=False)
        # Our websocket driver in place of Engine.IO's, for this server only.
        self.sio.eio._async = dict(
            self.sio.eio._async,
            websocket=functools.partial(_CappedWebSocket, on_too_large=self._too_large))
        self.sio.on('connect', self._on_connect)
        self.sio.on('disconnect', self._on_disconnect)
        self.sio.on('*', self._on_event)
        self._http = _ThreadingWSGIServer((host, port), _QuietRequestHandler)
        self._http.set_app(self._wsgi_app)
        self._thread = None

    @property
    def address(self) -> tuple:
        """(host, port) really bound: port 0 asks the system for a free one."""
        return self._http.server_address[:2]

    @property
    def connected(self) -> bool:
        return self.sio.client_sid is not None

    def start(self):
        self._thread = threading.Thread(target=self._http.serve_forever, name='quadsim-server',
                                        daemon=True)
        self._thread.start()

    def emit(self, event: str, payload: dict) -> bool:
        """Send one event to the connected client; False when there is none."""
        sid = self.sio.client_sid
        if sid is None:
            return False
        self.sio.emit(event, payload, to=sid)
        return True

    def close(self):
        self._http.shutdown()
        self._http.server_close()
        sid = self.sio.client_sid
        if sid is not None:
            self.sio.disconnect(sid)
        self.sio.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _wsgi_app(self, environ, start_response):
        try:
            return self.sio.handle_request(environ, start_response)
        except ConnectionError as exc:
            if isinstance(exc, (BrokenPipeError, ConnectionAbortedError, ConnectionResetError)):
                raise
            # simple-websocket's way of saying "the websocket is over, write no HTTP reply":
            # the kind of ConnectionError the standard library's WSGI handler leaves alone.
            raise ConnectionAbortedError('websocket closed') from exc

    def _on_connect(self, sid, environ, auth=None):
        self.sio.client_sid = sid
        self._listener.on_connect(sid)

    def _on_disconnect(self, sid, reason):
        if sid == self.sio.client_sid:
            self.sio.client_sid = None
            # The simulator quits with `41` before it closes the Engine.IO session: free the
            # slot now, so a simulator reconnecting on this news is not refused.
            self.sio.release_slot(self.sio.manager.eio_sid_from_sid(sid, '/'))
        self._listener.on_disconnect(sid, str(reason))

    def _on_event(self, event, sid, *args):
        self._listener.on_event(event, args)

    def _too_large(self, size, cap):
        self._listener.on_problem(
            'payload_too_large',
            f'closed the connection: a message passed {cap} bytes (raise max_payload_bytes '
            'if the simulator really sends frames this large)')
