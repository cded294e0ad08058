"""A scripted HTTP/2 origin for the muxd integration tests (python3-h2).

``H2Origin(pki, handler, ...)`` listens on an ephemeral loopback port, speaks
TLS with the test PKI's leaf certificate and selects "h2" by ALPN (or what
``alpn`` lists: with ("http/1.1",) it serves HTTP/1.1 instead, one request
at a time per connection).  Every TLS connection gets one I/O thread that
owns the socket (non-blocking, select) and the h2 state machine; every
complete request is handed to ``handler(req)`` in a thread of its own, so a
handler may take its time, answer streams in any order, reset them, send a
GOAWAY or close the connection.

What a handler uses (``H2Request``):

    req.method, req.path, req.authority, req.headers (list of (name, value),
    lower-case names), req.header(name), req.body (bytes), req.trailers,
    req.stream_id, req.conn (``H2ServerConn``: .id, .requests, .goaway(),
    .close(), .abort(), .send_raw(bytes), .raw_headers(...))
    req.respond(status, headers, body, trailers=None, content_length=True)
    req.send_head(status, headers, end_stream=False)   (1xx too)
    req.send_data(data, end_stream=False)   blocks on flow control
    req.send_trailers(headers)
    req.reset(error_code)
    req.peer_reset   (threading.Event) / req.reset_code

send_data raises ``StreamGone`` once the stream was reset or the connection
closed, so a handler streaming a large body simply ends.

Per connection the origin records what it saw, for the tests to check:
the streams open at once (``max_open``, counting streams refused for
exceeding max_concurrent_streams, which are listed in ``refused``;
``max_open_acked`` counts only streams opened after muxd acknowledged our
SETTINGS), the PINGs received, the
RST_STREAM frames muxd sent (``origin.resets``: (conn id, stream id, error
code, path)) and any protocol error (``origin.errors``).

Options: ``max_concurrent_streams`` and ``initial_window_size`` (our
SETTINGS), ``ping``: "ack" (default), "ignore" (no ACK, everything else
goes on) or "blackhole" (no ACK, and from that PING on the connection reads
and sends nothing: a dead peer); or a callable conn_id -> one of those.
``ack_data=False``: request body bytes are never given back to the flow
control windows (an origin that reads nothing: the sender must stall).
"""

import collections
import select
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

LOCALHOST = "127.0.0.1"
ErrorCodes = h2.errors.ErrorCodes

OUTBUF_HIGH = 1 << 20  # a sender waits while this much is queued for the socket


class StreamGone(Exception):
    """The stream was reset (by either side) or its connection closed."""


class _Connection(h2.connection.H2Connection):
    """h2's connection, with a say in how PINGs are answered (h2 4.1 ACKs
    them by itself inside receive_data)."""

    def __init__(self, owner, *a, **kw):
        super().__init__(*a, **kw)
        self._owner = owner
        self.dead = False

    def _receive_ping_frame(self, frame):
        if "ACK" in frame.flags:
            return super()._receive_ping_frame(frame)
        mode = self._owner.ping_mode
        self._owner.pings.append((time.monotonic(), bytes(frame.opaque_data), mode))
        if mode == "ack":
            return super()._receive_ping_frame(frame)
        # the PING's effects on the state machine, without the ACK frame
        self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_PING)
        if mode == "blackhole":
            self.dead = True
        ev = h2.events.PingReceived()
        ev.ping_data = frame.opaque_data
        return [], [ev]

    def _receive_frame(self, frame):
        if self.dead:
            return []
        return super()._receive_frame(frame)


class H2Request:
    def __init__(self, conn, stream_id, headers):
        self.conn = conn
        self.stream_id = stream_id
        self.headers = [(n.lower(), v) for n, v in headers]
        self.body = b""
        self._body = bytearray()
        self.trailers = []
        self.peer_reset = threading.Event()
        self.reset_code = None
        self.ended = False  # we sent END_STREAM or RST_STREAM
        self.refused = False  # over our MAX_CONCURRENT_STREAMS: REFUSED_STREAM
        self.received_at = time.monotonic()

    def header(self, name, default=None):
        name = name.lower()
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else default

    @property
    def method(self):
        return self.header(":method")

    @property
    def path(self):
        return self.header(":path")

    @property
    def authority(self):
        return self.header(":authority")

    @property
    def protocol(self):
        return "h2"

    def __repr__(self):
        return f"<H2Request conn={self.conn.id} stream={self.stream_id} {self.method} {self.path}>"

    # -- answering

    def send_head(self, status=200, headers=(), end_stream=False):
        fields = [(":status", str(status))] + [(n.lower(), str(v)) for n, v in headers]
        self.conn._call(lambda c: c.send_headers(self.stream_id, fields, end_stream=end_stream), self, end_stream)

    def send_data(self, data, end_stream=False):
        self.conn._send_data(self, bytes(data), end_stream)

    def send_trailers(self, headers):
        fields = [(n.lower(), str(v)) for n, v in headers]
        self.conn._call(lambda c: c.send_headers(self.stream_id, fields, end_stream=True), self, True)

    def respond(self, status=200, headers=(), body=b"", trailers=None, content_length=True):
        if isinstance(body, str):
            body = body.encode()
        headers = list(headers)
        if content_length and not any(n.lower() == "content-length" for n, _ in headers):
            headers.append(("content-length", str(len(body))))
        if not body and not trailers:
            self.send_head(status, headers, end_stream=True)
            return
        self.send_head(status, headers)
        if body:
            self.send_data(body, end_stream=not trailers)
        if trailers:
            self.send_trailers(trailers)

    def reset(self, error_code=ErrorCodes.INTERNAL_ERROR):
        self.conn._call(lambda c: c.reset_stream(self.stream_id, error_code), self, True)


class H1Request:
    """A request on a connection where ALPN chose HTTP/1.1 (same answering
    interface as H2Request, minus streams)."""

    def __init__(self, conn, method, path, version, headers, body):
        self.conn = conn
        self.stream_id = None
        self._method, self._path, self.version = method, path, version
        self.headers = [(n.lower(), v) for n, v in headers]
        self.body = body
        self.trailers = []
        self.peer_reset = threading.Event()
        self.received_at = time.monotonic()

    def header(self, name, default=None):
        name = name.lower()
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else default

    method = property(lambda self: self._method)
    path = property(lambda self: self._path)
    authority = property(lambda self: self.header("host"))
    protocol = property(lambda self: "http/1.1")

    def __repr__(self):
        return f"<H1Request conn={self.conn.id} {self.method} {self.path}>"

    def respond(self, status=200, headers=(), body=b"", trailers=None, content_length=True):
        if isinstance(body, str):
            body = body.encode()
        lines = [f"HTTP/1.1 {status} X"] + [f"{n}: {v}" for n, v in headers]
        if not any(n.lower() == "content-length" for n, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        self.conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


class H2ServerConn:
    def __init__(self, origin, conn_id, raw):
        self.origin = origin
        self.id = conn_id
        self.raw = raw
        self.sock = None
        self.alpn = None
        self.requests = []
        self.streams = {}
        self.open_streams = set()
        self.max_open = 0
        self.max_open_acked = 0
        self.settings_acked = False
        self.refused = []  # streams refused for exceeding max_concurrent_streams
        self.pings = []
        self.goaway_received = None
        self.goaway_sent = None
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.outbuf = bytearray()
        self.closing = False  # flush, linger briefly, close
        self.closed = threading.Event()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        ping = origin.ping
        self.ping_mode = ping(conn_id) if callable(ping) else ping
        self.h2 = None

    # -- called from handler threads

    def _wake(self):
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def _stream_done(self, req):
        req.ended = True
        self.open_streams.discard(req.stream_id)

    def _call(self, fn, req=None, ends=False):
        with self.lock:
            if self.closed.is_set() or self.h2.dead:
                raise StreamGone("connection closed")
            if req is not None and req.peer_reset.is_set():
                raise StreamGone(f"stream {req.stream_id} was reset ({req.reset_code})")
            try:
                fn(self.h2)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
                raise StreamGone(repr(e)) from e
            if req is not None and ends:
                self._stream_done(req)
            self.outbuf += self.h2.data_to_send()
        self._wake()

    def _send_data(self, req, data, end_stream):
        view = memoryview(data)
        with self.cond:
            while True:
                if self.closed.is_set() or self.h2.dead:
                    raise StreamGone("connection closed")
                if req.peer_reset.is_set():
                    raise StreamGone(f"stream {req.stream_id} was reset ({req.reset_code})")
                if not view:
                    if end_stream:
                        self._call(lambda c: c.end_stream(req.stream_id), req, True)
                    return
                if len(self.outbuf) >= OUTBUF_HIGH:
                    self.cond.wait(0.5)
                    continue
                try:
                    window = self.h2.local_flow_control_window(req.stream_id)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
                    raise StreamGone(repr(e)) from e
                n = min(window, self.h2.max_outbound_frame_size, len(view))
                if n <= 0:
                    self.cond.wait(0.5)
                    continue
                last = end_stream and n == len(view)
                piece = bytes(view[:n])
                self._call(lambda c: c.send_data(req.stream_id, piece, end_stream=last), req, last)
                view = view[n:]
                if last:
                    return

    def goaway(self, last_stream_id=None, error_code=ErrorCodes.NO_ERROR):
        """Send GOAWAY (last_stream_id: default the highest stream seen).
        The frame is written behind h2's back: h2 refuses to send anything
        after its own GOAWAY, but streams up to last_stream_id may still be
        answered."""
        with self.lock:
            if last_stream_id is None:
                last_stream_id = max(self.streams, default=0)
            f = hyperframe.frame.GoAwayFrame(0)
            f.last_stream_id = last_stream_id
            f.error_code = error_code
            self.outbuf += self.h2.data_to_send() + f.serialize()
            self.goaway_sent = (last_stream_id, error_code)
        self._wake()

    def send_raw(self, data):
        """Queue raw bytes (frames h2 would not send) behind what h2 has
        queued."""
        with self.lock:
            self.outbuf += self.h2.data_to_send() + bytes(data)
        self._wake()

    def raw_headers(self, stream_id, fields, end_stream=False, end_headers=True, extra=b""):
        """Send a HEADERS frame h2 would refuse (no validation: malformed
        heads), HPACK-encoded with the connection's own encoder so later
        blocks stay decodable, followed by the raw bytes extra."""
        with self.lock:
            f = hyperframe.frame.HeadersFrame(stream_id)
            f.data = self.h2.encoder.encode([(n, v) for n, v in fields])
            f.flags = set(["END_HEADERS"] if end_headers else []) | set(["END_STREAM"] if end_stream else [])
            self.outbuf += self.h2.data_to_send() + f.serialize() + bytes(extra)
        self._wake()

    def close(self):
        """Flush what is queued, linger a moment (so the peer reads it
        before any reset), close."""
        with self.lock:
            self.closing = True
        self._wake()

    def abort(self):
        """Close at once."""
        with self.lock:
            self.closed.set()
        self._wake()
        if self.alpn != "h2":  # the HTTP/1.1 loop blocks in reads
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the I/O thread

    def run(self):
        try:
            self.sock = self.origin.ctx.wrap_socket(self.raw, server_side=True, do_handshake_on_connect=False)
            self.sock.settimeout(10)
            self.sock.do_handshake()
            self.alpn = self.sock.selected_alpn_protocol()
        except (OSError, ssl.SSLError) as e:
            self.origin._error(f"conn {self.id}: TLS handshake: {e!r}")
            self._finish()
            return
        try:
            if self.alpn == "h2":
                self._run_h2()
            else:
                self._run_h1()
        except Exception as e:  # noqa: BLE001 - recorded for the test to inspect
            self.origin._error(f"conn {self.id}: {e!r}")
        finally:
            self._finish()

    def _finish(self):
        with self.cond:
            self.closed.set()
            self.cond.notify_all()
            for req in self.streams.values():
                if not req.ended:
                    req.peer_reset.set()
        for s in (self.sock or self.raw, self.wake_r, self.wake_w):
            try:
                s.close()
            except OSError:
                pass

    def _run_h2(self):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = _Connection(self, config=cfg)
        settings = {}
        if self.origin.max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self.origin.max_concurrent_streams
        if self.origin.initial_window_size is not None:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = self.origin.initial_window_size
        limit = self.origin.max_concurrent_streams
        with self.lock:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
            self.h2.initiate_connection()
            if limit is not None:
                # h2 would enforce the limit from the first byte, with a
                # connection error.  Like nginx, refuse excess streams with
                # REFUSED_STREAM instead (see _feed), and let h2 enforce it
                # only once muxd has ACKed our SETTINGS.
                mcs = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                self.h2.local_settings._settings[mcs] = collections.deque([2**31 - 1, limit])
            self.outbuf += self.h2.data_to_send()
        sock = self.sock
        sock.setblocking(False)
        linger_until = None
        while not self.closed.is_set() and not self.origin.stopping.is_set():
            with self.lock:
                want_write = bool(self.outbuf) and not self.h2.dead
            try:
                r, w, _ = select.select([sock, self.wake_r], [sock] if want_write else [], [], 0.05)
            except (OSError, ValueError):
                return
            if self.wake_r in r:
                try:
                    while self.wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            # read everything available (TLS records may be buffered)
            if sock in r:
                while True:
                    try:
                        data = sock.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    except (OSError, ssl.SSLError):
                        data = b""
                    if not data:
                        return  # EOF or reset
                    if linger_until is None:
                        self._feed(data)
            # write what fits
            with self.lock:
                if self.h2.dead:
                    self.outbuf.clear()
                while self.outbuf:
                    try:
                        n = sock.send(self.outbuf[:16384])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        break
                    except (OSError, ssl.SSLError):
                        return
                    del self.outbuf[:n]
                self.cond.notify_all()
                if self.closing and not self.outbuf and linger_until is None:
                    linger_until = time.monotonic() + 0.3
            if linger_until is not None and time.monotonic() >= linger_until:
                return

    def _feed(self, data):
        handlers = []
        with self.lock:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                self.origin._error(f"conn {self.id}: h2 protocol error: {e!r}")
                self.outbuf += self.h2.data_to_send()
                self.closing = True
                return
            for ev in events:
                req = self.streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.RequestReceived):
                    req = H2Request(self, ev.stream_id, ev.headers)
                    self.streams[ev.stream_id] = req
                    self.open_streams.add(ev.stream_id)
                    self.max_open = max(self.max_open, len(self.open_streams))
                    if self.settings_acked:
                        self.max_open_acked = max(self.max_open_acked, len(self.open_streams))
                    limit = self.origin.max_concurrent_streams
                    if limit is not None and len(self.open_streams) > limit:
                        self.refused.append(ev.stream_id)
                        self.h2.reset_stream(ev.stream_id, ErrorCodes.REFUSED_STREAM)
                        self._stream_done(req)
                        req.refused = True
                elif isinstance(ev, h2.events.DataReceived):
                    if req is not None:
                        req._body += ev.data
                    if self.origin.ack_data:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    if req is not None:
                        req.trailers = list(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded):
                    if req is not None and not req.refused:
                        req.body = bytes(req._body)
                        self.requests.append(req)
                        handlers.append(req)
                elif isinstance(ev, h2.events.StreamReset):
                    if req is not None:
                        req.reset_code = ev.error_code
                        req.peer_reset.set()
                        self._stream_done(req)
                        if ev.remote_reset:
                            self.origin._reset(self.id, ev.stream_id, ev.error_code, req.path)
                elif isinstance(ev, h2.events.SettingsAcknowledged):
                    self.settings_acked = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway_received = (ev.error_code, ev.last_stream_id)
            self.outbuf += self.h2.data_to_send()
            self.cond.notify_all()
        for req in handlers:
            self.origin._dispatch(req)

    def _run_h1(self):
        sock = self.sock
        sock.settimeout(None)
        rfile = sock.makefile("rb")
        try:
            while not self.closed.is_set() and not self.origin.stopping.is_set():
                line = rfile.readline(70000)
                if not line:
                    return
                method, path, version = line.decode("latin-1").split()
                headers = []
                while True:
                    h = rfile.readline(70000)
                    if h in (b"\r\n", b""):
                        break
                    n, _, v = h.decode("latin-1").rstrip("\r\n").partition(":")
                    headers.append((n.strip(), v.strip()))
                length = sum(int(v) for n, v in headers if n.lower() == "content-length")
                body = rfile.read(length) if length else b""
                req = H1Request(self, method, path, version, headers, body)
                with self.lock:
                    self.requests.append(req)
                    self.max_open = 1
                self.origin._record(req)
                self.origin._run_handler(req)
        finally:
            rfile.close()


class H2Origin:
    """See the module docstring.  handler(req) answers each request."""

    def __init__(self, pki, handler, alpn=("h2",), max_concurrent_streams=None, initial_window_size=None,
                 ping="ack", ack_data=True):
        self.handler = handler
        self.ack_data = ack_data
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.ping = ping
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
        self.ctx.set_alpn_protocols(list(alpn))
        self.lock = threading.Lock()
        self.conns = []
        self.requests = []
        self.resets = []
        self.errors = []
        self.threads = []
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.bind((LOCALHOST, 0))
        self.listener.listen(256)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return f"https://{LOCALHOST}:{self.port}{path}"

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    @property
    def connections(self):
        """TCP connections accepted so far."""
        with self.lock:
            return len(self.conns)

    def conn(self, i):
        with self.lock:
            return self.conns[i]

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                conn = H2ServerConn(self, len(self.conns), raw)
                self.conns.append(conn)
            self._spawn(conn.run)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self.lock:
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
        t.start()

    def _error(self, text):
        with self.lock:
            self.errors.append(text)

    def _reset(self, conn_id, stream_id, code, path):
        with self.lock:
            self.resets.append((conn_id, stream_id, code, path))

    def _record(self, req):
        with self.lock:
            self.requests.append(req)

    def _dispatch(self, req):
        self._record(req)
        self._spawn(self._run_handler, req)

    def _run_handler(self, req):
        try:
            self.handler(req)
        except StreamGone:
            pass
        except Exception as e:  # noqa: BLE001 - recorded for the test to inspect
            self._error(f"handler for {req!r}: {e!r}")

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        for c in conns:
            c.abort()
        for t in threads:
            t.join(5)


def ok_handler(req):
    """Answer 200 with a small text body naming the path and connection."""
    req.respond(200, [("content-type", "text/plain")], f"{req.path} conn={req.conn.id}\n")
