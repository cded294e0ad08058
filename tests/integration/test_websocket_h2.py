"""WebSocket over HTTP/2 to intercepted clients (RFC 8441, issue 14 item 3).

Inside interception an HTTP/2 client gets SETTINGS_ENABLE_CONNECT_PROTOCOL=1
when ``[muxd] upgrade`` lists websocket; its extended CONNECT (``:protocol
websocket``) becomes an HTTP/1.1 upgrade on a dedicated connection to the
origin (muxd makes the Sec-WebSocket-Key and checks the Accept), the 101
becomes ``:status 200`` and the stream's DATA is spliced with the origin:
windows reopen only as the origin takes the bytes, END_STREAM is a
half-close, RST_STREAM a close, tunnel_idle_timeout applies.

The client is python-h2 over TLS through a CONNECT that muxd intercepts
(ALPN h2); the WebSocket frames are written and read with websockets'
sans-I/O protocol on the stream's DATA.  The origin is test_websocket.py's
WsServer (python3-websockets, TLS with the test PKI).

Upstream extended CONNECT: ConnectProtocolOrigin, a python-h2 origin that
advertises SETTINGS_ENABLE_CONNECT_PROTOCOL and echoes on such streams,
takes WebSockets of HTTP/1.1 and HTTP/2 clients on its pooled connection.
"""

import socket
import ssl
import time

import pytest

from support import LOCALHOST, open_tunnel, pattern_bytes, recv_within, wait_until

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import h2.settings
    from websockets.connection import Connection, Side
    from websockets.frames import Close, Opcode

    from test_websocket import WsServer
except ImportError:  # a broken setup, not a reason to test less
    h2 = None


@pytest.fixture(autouse=True)
def _need_modules():
    if h2 is None:
        pytest.fail("python3-h2 or python3-websockets is not installed (scripts/install-deps)")


@pytest.fixture
def wss(pki):
    """A started TLS WsServer (stopped at teardown)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, pki.leaf))
    s = WsServer(ctx)
    yield s
    s.stop()


def conf(pki, port, **muxd_keys):
    c = {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}
    if muxd_keys:
        c["muxd"] = muxd_keys
    return c


class H2:
    """One HTTP/2 connection inside muxd's interception of a CONNECT."""

    def __init__(self, m, authority):
        resp, reader = open_tunnel(m.port, authority, timeout=20)
        assert resp.status == 200, resp
        ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(reader.sock, server_hostname=LOCALHOST)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = authority
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.settings = False
        self.heads, self.bodies, self.ended, self.reset = {}, {}, set(), {}
        self.closed = False
        self.ws = {}  # stream id -> websockets Connection
        self.ws_events = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout=0.2):
        if self.closed:
            return False
        data = recv_within(self.sock, timeout)
        if data is None:
            self.closed = True
            return False
        if not data:
            return True
        for ev in self.conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings = True
            elif isinstance(ev, h2.events.ResponseReceived):
                self.heads[sid] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                if sid in self.ws:
                    self.ws[sid].receive_data(ev.data)
                    self.ws_events[sid] += self.ws[sid].events_received()
                    self._ws_flush(sid)
                else:
                    self.bodies[sid] = self.bodies.get(sid, b"") + ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(sid)
                if sid in self.ws:
                    self.ws[sid].receive_eof()
                    self.ws_events[sid] += self.ws[sid].events_received()
                    self._ws_flush(sid)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset[sid] = ev.error_code
        self.flush()
        return True

    def until(self, pred, timeout=15, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if not self.pump() and not pred():
                raise AssertionError(f"connection closed while waiting for {what}")

    def request(self, path, method="GET", headers=(), end_stream=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"),
                                     (":authority", self.authority), (":path", path),
                                     *headers], end_stream=end_stream)
        self.flush()
        return sid

    def connect_ws(self, path, headers=(("sec-websocket-version", "13"),)):
        """An extended CONNECT for a WebSocket; returns its stream id once
        the head came back."""
        self.until(lambda: self.settings, what="muxd's SETTINGS")
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                     (":scheme", "https"), (":authority", self.authority),
                                     (":path", path), *headers])
        self.flush()
        self.until(lambda: sid in self.heads or sid in self.reset, what="the CONNECT's answer")
        return sid

    def open_ws(self, path="/echo"):
        sid = self.connect_ws(path)
        assert self.heads[sid][":status"] == "200", self.heads[sid]
        self.ws[sid] = Connection(Side.CLIENT, max_size=None)
        self.ws_events[sid] = []
        return sid

    def send_data(self, sid, data, end=False):
        """Send data on sid as the windows allow (reading meanwhile)."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self.until(lambda: self.conn.local_flow_control_window(sid) > 0,
                           what="muxd to open its window")
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def _ws_flush(self, sid):
        for data in self.ws[sid].data_to_send():
            if sid in self.ended and sid in self.reset:
                return
            try:
                if data:
                    self.send_data(sid, data)
                else:
                    self.conn.end_stream(sid)
                    self.flush()
            except h2.exceptions.StreamClosedError:
                return

    def ws_send(self, sid, msg):
        if isinstance(msg, str):
            self.ws[sid].send_text(msg.encode())
        else:
            self.ws[sid].send_binary(msg)
        self._ws_flush(sid)

    def ws_frame(self, sid, timeout=30):
        self.until(lambda: self.ws_events[sid], timeout=timeout, what="a WebSocket frame")
        return self.ws_events[sid].pop(0)

    def ws_recv(self, sid):
        f = self.ws_frame(sid)
        assert f.opcode in (Opcode.TEXT, Opcode.BINARY), f
        return f.data.decode() if f.opcode == Opcode.TEXT else f.data


def dedicated(m):
    return m.metrics().sum("muxd_upstream_connections", proto="h1")


# --------------------------------------------------------------------------


@pytest.mark.parametrize("upgrade,advertised", [(None, 1), ("none", 0), ("h2c", 0)],
                         ids=["default", "none", "not-websocket"])
def test_enable_connect_protocol_only_with_websocket(muxd, wss, pki, upgrade, advertised):
    m = muxd(conf(pki, wss.port, **({"upgrade": upgrade} if upgrade else {})))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    c.until(lambda: c.settings, what="muxd's SETTINGS")
    assert c.conn.remote_settings.enable_connect_protocol == advertised


def test_ws_echo_over_h2(muxd, wss, pki):
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws()
    head = c.heads[sid]
    assert "sec-websocket-accept" not in head  # RFC 8441: no Accept on HTTP/2
    assert "content-length" not in head
    assert "muxd" in head.get("via", "")
    c.ws_send(sid, "hello over h2")
    assert c.ws_recv(sid) == "hello over h2"
    c.ws_send(sid, b"\x00\x01binary\xff")
    assert c.ws_recv(sid) == b"\x00\x01binary\xff"
    assert wss.handshakes == 1
    # the client closes: the server's close comes back, then its end
    c.ws[sid].send_close(1000, "done")
    c._ws_flush(sid)
    f = c.ws_frame(sid)
    assert f.opcode == Opcode.CLOSE and Close.parse(f.data).code == 1000
    c.until(lambda: sid in c.ended, what="the stream's END_STREAM")
    assert sid not in c.reset
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 1
    wait_until(lambda: dedicated(m) == 0, what="the dedicated connection to close")


def test_large_messages_both_ways(muxd, wss, pki):
    """Far more than every window and buffer on the way, both directions."""
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws()
    big = pattern_bytes(3 * 1024 * 1024 + 17, seed=9)
    for _ in range(2):
        c.ws_send(sid, big)
        got = c.ws_recv(sid)
        assert len(got) == len(big) and got == big


def test_server_close_propagated(muxd, wss, pki):
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws("/bye")
    c.ws_send(sid, "anything")
    f = c.ws_frame(sid)
    assert f.opcode == Opcode.CLOSE
    assert (Close.parse(f.data).code, Close.parse(f.data).reason) == (1000, "bye")
    # our close answer and END_STREAM went; the origin's end comes back as ours
    c.until(lambda: sid in c.ended, what="the stream's END_STREAM")
    assert sid not in c.reset
    wait_until(lambda: dedicated(m) == 0, what="the dedicated connection to close")


def test_client_reset_closes_the_origin_connection(muxd, wss, pki):
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws("/silent")
    assert dedicated(m) == 1
    c.conn.reset_stream(sid)
    c.flush()
    wait_until(lambda: dedicated(m) == 0, what="the dedicated connection to close")
    # the connection goes on
    other = c.request("/plain")
    c.until(lambda: other in c.ended, what="a normal response")
    assert c.heads[other][":status"] == "200"


def test_idle_websocket_reset_after_tunnel_idle_timeout(muxd, wss, pki):
    m = muxd(conf(pki, wss.port, tunnel_idle_timeout="1s"))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws("/silent")
    c.until(lambda: sid in c.reset or sid in c.ended, what="the idle stream to end")
    wait_until(lambda: dedicated(m) == 0, what="the dedicated connection to close")


@pytest.mark.parametrize("path,status,body", [("/refuse403", "403", b"forbidden here\n"),
                                               ("/plain", "502", None)])
def test_refused_upgrade_relayed(muxd, wss, pki, path, status, body):
    """A refusal is an ordinary response; a 2xx that did not switch would
    read as "switched" to an HTTP/2 client, so it is a 502."""
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.connect_ws(path)
    assert c.heads[sid][":status"] == status
    c.until(lambda: sid in c.ended or sid in c.reset, what="the response's end")
    if body is not None:
        assert c.bodies.get(sid, b"") == body
    else:
        assert b"did not switch" in c.bodies.get(sid, b"")
    wait_until(lambda: dedicated(m) == 0, what="the dedicated connection to close")


def test_normal_stream_alongside_a_websocket(muxd, wss, pki):
    m = muxd(conf(pki, wss.port))
    c = H2(m, f"{LOCALHOST}:{wss.port}")
    sid = c.open_ws()
    c.ws_send(sid, "first")
    assert c.ws_recv(sid) == "first"
    other = c.request("/plain")
    c.until(lambda: other in c.ended, what="the normal response")
    assert c.heads[other][":status"] == "200"
    assert c.bodies[other] == b"a plain page\n"
    c.ws_send(sid, "still open")
    assert c.ws_recv(sid) == "still open"
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 2
    assert mt.value("muxd_client_h2_sessions_total") == 1


def test_wrong_accept_is_502(muxd, stream_server, pki):
    """The 101's Sec-WebSocket-Accept must match the key muxd sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, pki.leaf))
    seen = {}

    def handler(sock):
        tls = ctx.wrap_socket(sock, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            data = tls.recv(4096)
            if not data:
                return
            head += data
        seen["head"] = head
        tls.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n")
        tls.recv(1)

    srv = stream_server(handler)
    m = muxd(conf(pki, srv.port))
    c = H2(m, f"{LOCALHOST}:{srv.port}")
    sid = c.connect_ws("/x", headers=(("sec-websocket-version", "13"),
                                      ("sec-websocket-protocol", "chat")))
    assert c.heads[sid][":status"] == "502"
    head = seen["head"].lower()
    assert head.startswith(b"get /x http/1.1\r\n")
    assert b"\r\nupgrade: websocket\r\n" in head
    assert b"\r\nconnection: upgrade\r\n" in head
    assert b"\r\nsec-websocket-key: " in head
    assert b"\r\nsec-websocket-version: 13\r\n" in head
    assert b"\r\nsec-websocket-protocol: chat\r\n" in head


def test_half_close_after_a_stalled_upload(muxd, stream_server, pki):
    """The client's END_STREAM comes while its bytes still wait in muxd (the
    origin reads nothing yet): they all reach the origin, then its EOF."""
    import base64
    import hashlib
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, pki.leaf))
    go = threading.Event()
    got = {"n": 0, "eof": False}

    def handler(sock):
        tls = ctx.wrap_socket(sock, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(4096)
        key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
               if ln.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                  .digest())
        tls.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        go.wait(60)
        tls.settimeout(20)
        while (data := tls.recv(1 << 16)):
            got["n"] += len(data)
        got["eof"] = True

    srv = stream_server(handler)
    m = muxd(conf(pki, srv.port))
    c = H2(m, f"{LOCALHOST}:{srv.port}")
    sid = c.connect_ws("/up")
    assert c.heads[sid][":status"] == "200"
    chunk = pattern_bytes(1 << 14, seed=3)
    sent, stalled_since = 0, None
    while sent < 256 << 20:
        w = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if w > 0:
            c.conn.send_data(sid, chunk[:w])
            c.flush()
            sent += w
            stalled_since = None
        elif stalled_since is None:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since > 0.5:
            break
        else:
            c.pump(timeout=0.1)
    assert stalled_since is not None, "muxd kept opening its window to an origin reading nothing"
    c.conn.end_stream(sid)  # an empty DATA frame: no window needed
    c.flush()
    go.set()
    wait_until(lambda: got["eof"], timeout=30, what="the origin to see the client's end")
    assert got["n"] == sent


# --------------------------------------------------------------------------
# upstream: an HTTP/2 origin that allows extended CONNECT (RFC 8441)


class ConnectProtocolOrigin:
    """python-h2 over TLS (ALPN h2) that advertises
    SETTINGS_ENABLE_CONNECT_PROTOCOL: an extended CONNECT gets 200 and its
    DATA echoed (its END_STREAM too); any other request gets 200 "plain\\n".
    .requests: the header lists seen; .connections: TLS connections."""

    def __init__(self, pki):
        import threading
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*map(str, pki.leaf))
        self.ctx.set_alpn_protocols(["h2"])
        self.requests = []
        self.connections = 0
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.bind((LOCALHOST, 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        import threading
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock):
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            sock.close()
            return
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        conn.initiate_connection()
        tunnels, pending, ending = set(), {}, set()
        tls.settimeout(0.05)
        try:
            while not self.stopping.is_set():
                for sid in list(pending):  # echo what the windows allow
                    data = pending[sid]
                    n = min(len(data), conn.local_flow_control_window(sid),
                            conn.max_outbound_frame_size)
                    if n > 0:
                        conn.send_data(sid, data[:n])
                        pending[sid] = data[n:]
                    if not pending[sid]:
                        del pending[sid]
                        if sid in ending:
                            conn.end_stream(sid)
                            ending.discard(sid)
                out = conn.data_to_send()
                if out:
                    tls.sendall(out)
                try:
                    data = tls.recv(1 << 16)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    return
                for ev in conn.receive_data(data):
                    sid = getattr(ev, "stream_id", None)
                    if isinstance(ev, h2.events.RequestReceived):
                        hdrs = dict(ev.headers)
                        self.requests.append(list(ev.headers))
                        if hdrs.get(":method") == "CONNECT" and ":protocol" in hdrs:
                            tunnels.add(sid)
                            conn.send_headers(sid, [(":status", "200"),
                                                    ("sec-websocket-protocol", "chat")])
                        elif ev.stream_ended is not None or hdrs.get(":method") == "GET":
                            conn.send_headers(sid, [(":status", "200"),
                                                    ("content-length", "6")])
                            conn.send_data(sid, b"plain\n", end_stream=True)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                        if sid in tunnels:
                            pending[sid] = pending.get(sid, b"") + ev.data
                    elif isinstance(ev, h2.events.StreamEnded) and sid in tunnels:
                        if sid in pending:
                            ending.add(sid)
                        else:
                            conn.end_stream(sid)
                    elif isinstance(ev, h2.events.StreamReset):
                        tunnels.discard(sid)
                        pending.pop(sid, None)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            return
        finally:
            tls.close()

    def stop(self):
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def cp_origin(pki):
    o = ConnectProtocolOrigin(pki)
    yield o
    o.stop()


def test_h1_websocket_as_extended_connect_upstream(muxd, cp_origin, pki):
    """An HTTP/1.1 client's wss:// upgrade goes as an extended CONNECT stream
    on the pooled HTTP/2 connection of an origin that allows it."""
    from test_websocket import accept_value, handshake
    m = muxd(conf(pki, cp_origin.port))
    authority = f"{LOCALHOST}:{cp_origin.port}"
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    # a first request: the pooled HTTP/2 connection and the origin's SETTINGS
    resp, reader = open_tunnel(m.port, authority, timeout=20)
    tls = ctx.wrap_socket(reader.sock, server_hostname=LOCALHOST)
    tls.sendall(f"GET /plain HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    from support import HTTPReader
    assert HTTPReader(tls).read_response().body == b"plain\n"
    tls.close()
    resp, reader = open_tunnel(m.port, authority, timeout=20)
    tls = ctx.wrap_socket(reader.sock, server_hostname=LOCALHOST)
    status, hdrs, r, key = handshake(tls, "/ws", authority,
                                     extra=[("Sec-WebSocket-Protocol", "chat")])
    assert status == 101, (status, hdrs)
    assert hdrs.get("sec-websocket-accept") == accept_value(key)
    assert hdrs.get("sec-websocket-protocol") == "chat"
    assert "websocket" in hdrs.tokens("upgrade")
    tls.sendall(b"raw bytes both ways")
    got = bytes(r.buf)
    r.buf.clear()
    while len(got) < 19:
        got += tls.recv(1 << 16)
    assert got == b"raw bytes both ways"
    big = pattern_bytes(2 * 1024 * 1024 + 3, seed=4)
    import threading
    sender = threading.Thread(target=tls.sendall, args=(big,), daemon=True)
    sender.start()
    got = b""
    while len(got) < len(big):
        got += tls.recv(1 << 18)
    sender.join(10)
    assert got == big
    # the client's half-close is the stream's END_STREAM; the origin's comes back
    tls.shutdown(socket.SHUT_WR)
    assert r.wait_eof(10)
    tls.close()
    connect_req = [dict(h) for h in cp_origin.requests if dict(h).get(":method") == "CONNECT"]
    assert len(connect_req) == 1
    h = connect_req[0]
    assert (h[":protocol"], h[":scheme"], h[":path"]) == ("websocket", "https", "/ws")
    assert h.get("sec-websocket-version") == "13"
    assert h.get("sec-websocket-protocol") == "chat"
    assert "sec-websocket-key" not in h and "upgrade" not in h and "connection" not in h
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h2") == 1
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") in (0, None)
    assert cp_origin.connections == 1


def test_h2_websocket_as_extended_connect_upstream(muxd, cp_origin, pki):
    """An HTTP/2 client's extended CONNECT goes on as one, on the pooled
    connection, next to a normal stream."""
    m = muxd(conf(pki, cp_origin.port))
    c = H2(m, f"{LOCALHOST}:{cp_origin.port}")
    first = c.request("/plain")
    c.until(lambda: first in c.ended, what="the first response")
    assert c.bodies[first] == b"plain\n"
    sid = c.connect_ws("/ws")
    assert c.heads[sid][":status"] == "200"
    assert c.heads[sid].get("sec-websocket-protocol") == "chat"
    c.send_data(sid, b"over two HTTP/2 streams")
    c.until(lambda: c.bodies.get(sid, b"") == b"over two HTTP/2 streams", what="the echo")
    big = pattern_bytes(1024 * 1024 + 5, seed=6)
    c.bodies[sid] = b""
    c.send_data(sid, big)
    c.until(lambda: len(c.bodies.get(sid, b"")) >= len(big), timeout=30, what="the big echo")
    assert c.bodies[sid] == big
    c.conn.end_stream(sid)
    c.flush()
    c.until(lambda: sid in c.ended, what="the origin's END_STREAM")
    assert sid not in c.reset
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h2") == 1
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") in (0, None)
    assert cp_origin.connections == 1
