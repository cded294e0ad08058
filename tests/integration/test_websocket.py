"""WebSocket and HTTP/1.1 Upgrade through muxd (``[muxd] upgrade``).

A request with ``Connection: upgrade`` and an ``Upgrade`` naming an allowed
protocol goes over a dedicated upstream HTTP/1.1 connection (never pooled);
a 101 is relayed and the bytes are then spliced both ways like a CONNECT
tunnel (bounded buffers, half-close, tunnel_idle_timeout).  A refused upgrade
is relayed as a normal response and both connections close.

The origin is a real WebSocket server (Debian's python3-websockets 10.4, in a
thread, plain and with TLS from the test PKI).  websockets 10.4 has no proxy
support, so the client does the handshake by hand on a socket (absolute form
to muxd for ws://, a CONNECT that muxd intercepts for wss://) and frames its
messages with websockets' sans-I/O protocol.
"""

import asyncio
import base64
import hashlib
import os
import socket
import ssl
import threading
import time
from http import HTTPStatus

import pytest

from support import (
    LOCALHOST,
    SANITIZE,
    HTTPReader,
    connect,
    open_tunnel,
    pattern_bytes,
    proxy_request,
    vm_hwm_kib,
    wait_until,
)

try:
    import websockets
    from websockets.connection import Connection, Side
    from websockets.frames import Close, Opcode
except ImportError:  # a broken setup, not a reason to test less
    websockets = None

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(autouse=True)
def _need_websockets():
    if websockets is None:
        pytest.fail("python3-websockets is not installed (scripts/install-deps)")


# --------------------------------------------------------------------------
# the origin: a websockets server in a thread


class WsServer:
    """websockets.serve on an ephemeral loopback port, in its own thread.

    Paths: /echo echoes every message; /silent says nothing; /bye closes
    with 1000 "bye" after the first message; /flood sends `flood` bytes in
    1 MiB messages as fast as the client takes them (.flooded counts what
    went out); /refuse403 and /plain answer without switching (403 and 200).
    """

    def __init__(self, ssl_context=None, flood=0):
        self.flood = flood
        self.flooded = 0
        self.handshakes = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping = None
        self.thread = threading.Thread(target=self._run, args=(ssl_context,), daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise AssertionError("websocket server did not start")

    async def _process_request(self, path, headers):
        if path == "/refuse403":
            return HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"forbidden here\n"
        if path == "/plain":
            return HTTPStatus.OK, [("Content-Type", "text/plain")], b"a plain page\n"
        return None

    async def _handler(self, ws, path):
        self.handshakes += 1
        if path == "/echo":
            async for msg in ws:
                await ws.send(msg)
        elif path == "/bye":
            await ws.recv()
            await ws.close(1000, "bye")
        elif path == "/flood":
            chunk = pattern_bytes(1 << 20, seed=5)
            while self.flooded < self.flood:
                await ws.send(chunk)
                self.flooded += len(chunk)
            await ws.wait_closed()
        else:
            await ws.wait_closed()

    def _run(self, ssl_context):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.stopping = asyncio.Event()
            async with websockets.serve(self._handler, LOCALHOST, 0, ssl=ssl_context, max_size=None,
                                        compression=None, ping_interval=None, write_limit=1 << 16,
                                        process_request=self._process_request) as server:
                self.port = server.sockets[0].getsockname()[1]
                self.ready.set()
                await self.stopping.wait()

        self.loop.run_until_complete(main())

    def stop(self):
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture
def ws_server(pki):
    """Factory: ws_server(tls=False, flood=0) -> a started WsServer."""
    servers = []

    def start(tls=False, flood=0):
        ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*map(str, pki.leaf))
        s = WsServer(ctx, flood)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------
# the client: a hand-made handshake, then websockets' sans-I/O protocol


def handshake(sock, target, host, extra=(), version="HTTP/1.1"):
    """Send a WebSocket upgrade request; return (status, headers, reader, key)."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
               ("Sec-WebSocket-Version", "13"), *extra]
    lines = [f"GET {target} {version}", f"Host: {host}"] + [f"{n}: {v}" for n, v in headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    reader = HTTPReader(sock)
    _, status, _, hdrs = reader.read_head()
    return status, hdrs, reader, key


def accept_value(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


class WsClient:
    """The client side of an open WebSocket on sock (bytes that came with
    the 101 wait in reader.buf)."""

    def __init__(self, sock, reader):
        self.sock = sock
        self.proto = Connection(Side.CLIENT, max_size=None)
        self.eof = False
        if reader.buf:
            self.proto.receive_data(bytes(reader.buf))
            reader.buf.clear()
        self.pending = []

    def flush(self):
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)
            else:
                self.sock.shutdown(socket.SHUT_WR)

    def send(self, data):
        if isinstance(data, str):
            self.proto.send_text(data.encode())
        else:
            self.proto.send_binary(data)
        self.flush()

    def _feed(self):
        try:
            data = self.sock.recv(1 << 18)
        except ConnectionResetError:
            data = b""
        if data:
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        self.flush()  # a close answered, a pong

    def frame(self):
        """The next frame (a message's whole data: this client sends and
        receives unfragmented messages only, as the server does)."""
        while not self.pending:
            if self.eof:
                raise AssertionError("EOF while waiting for a frame")
            self._feed()
            self.pending += self.proto.events_received()
        return self.pending.pop(0)

    def recv(self):
        f = self.frame()
        assert f.opcode in (Opcode.TEXT, Opcode.BINARY), f
        return f.data.decode() if f.opcode == Opcode.TEXT else f.data

    def wait_eof(self):
        while not self.eof:
            self._feed()
            self.pending += self.proto.events_received()


def ws_connect(m, server, path="/echo", **kw):
    """ws:// through muxd in absolute form: (WsClient, headers of the 101)."""
    sock = connect(m.port, timeout=20)
    status, hdrs, reader, key = handshake(sock, f"http://{LOCALHOST}:{server.port}{path}",
                                          f"{LOCALHOST}:{server.port}", **kw)
    assert status == 101, (status, hdrs)
    assert hdrs.get("sec-websocket-accept") == accept_value(key)
    assert "websocket" in hdrs.tokens("upgrade")
    assert "upgrade" in hdrs.tokens("connection")
    return WsClient(sock, reader), hdrs


def wss_connect(m, server, path="/echo"):
    """wss:// through muxd: CONNECT, intercepted with muxd's CA."""
    resp, reader = open_tunnel(m.port, f"{LOCALHOST}:{server.port}", timeout=20)
    assert resp.status == 200
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    tls = ctx.wrap_socket(reader.sock, server_hostname=LOCALHOST)
    status, hdrs, reader, key = handshake(tls, path, f"{LOCALHOST}:{server.port}")
    assert status == 101, (status, hdrs)
    assert hdrs.get("sec-websocket-accept") == accept_value(key)
    return WsClient(tls, reader), hdrs


def intercept_conf(pki, port, **muxd_keys):
    return {"muxd": muxd_keys, "intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}


def close_handshake(c, code=1000):
    """The client closes; the server's close comes back, then the end."""
    c.proto.send_close(code, "done")
    c.flush()
    f = c.frame()
    assert f.opcode == Opcode.CLOSE
    assert Close.parse(f.data).code == code
    c.wait_eof()


# --------------------------------------------------------------------------
# tests


def test_ws_echo_in_absolute_form(muxd, ws_server):
    srv = ws_server()
    m = muxd()
    c, hdrs = ws_connect(m, srv)
    assert any("muxd" in v for v in hdrs.get_all("via"))
    c.send("hello through muxd")
    assert c.recv() == "hello through muxd"
    c.send(b"\x00\x01binary\xff")
    assert c.recv() == b"\x00\x01binary\xff"
    close_handshake(c)
    mt = m.metrics()
    assert mt.value("muxd_requests_total", proto="h1") == 1
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 1
    # closed with the WebSocket: nothing went back to the pool
    wait_until(lambda: m.metrics().sum("muxd_upstream_connections", proto="h1") == 0,
               what="the dedicated connection to close")


def test_wss_intercepted_echo(muxd, ws_server, pki):
    srv = ws_server(tls=True)
    m = muxd(intercept_conf(pki, srv.port))
    c, _ = wss_connect(m, srv)
    c.send("secure hello")
    assert c.recv() == "secure hello"
    close_handshake(c)
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h1") == 1


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_large_messages_both_ways(muxd, ws_server, pki, tls):
    srv = ws_server(tls=tls)
    m = muxd(intercept_conf(pki, srv.port) if tls else None)
    c, _ = (wss_connect if tls else ws_connect)(m, srv)
    big = pattern_bytes(3 * 1024 * 1024 + 17, seed=9)
    for _ in range(2):
        c.send(big)
        got = c.recv()
        assert len(got) == len(big) and got == big
    close_handshake(c)


def test_server_close_propagated(muxd, ws_server):
    srv = ws_server()
    m = muxd()
    c, _ = ws_connect(m, srv, "/bye")
    c.send("anything")
    f = c.frame()
    assert f.opcode == Opcode.CLOSE
    close = Close.parse(f.data)
    assert (close.code, close.reason) == (1000, "bye")
    c.wait_eof()  # the client answered the close; the server's FIN comes through


def test_idle_websocket_closed_after_tunnel_idle_timeout(muxd, ws_server):
    srv = ws_server()
    m = muxd({"muxd": {"tunnel_idle_timeout": "1s"}})
    c, _ = ws_connect(m, srv, "/silent")
    c.sock.settimeout(15)
    c.wait_eof()
    wait_until(lambda: m.metrics().sum("muxd_upstream_connections", proto="h1") == 0,
               what="the dedicated connection to close")


@pytest.mark.parametrize("path,status,body", [("/refuse403", 403, b"forbidden here\n"),
                                               ("/plain", 200, b"a plain page\n")])
def test_refused_upgrade_relayed_as_a_response(muxd, ws_server, path, status, body):
    srv = ws_server()
    m = muxd()
    sock = connect(m.port, timeout=20)
    st, hdrs, reader, _ = handshake(sock, f"http://{LOCALHOST}:{srv.port}{path}",
                                    f"{LOCALHOST}:{srv.port}")
    assert st == status
    assert b"".join(reader.iter_body(hdrs, st)) == body
    assert "upgrade" not in hdrs.names()
    assert "close" in hdrs.tokens("connection")
    assert reader.wait_eof(10), "the client connection should close after a refused upgrade"
    sock.close()
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 1
    wait_until(lambda: m.metrics().sum("muxd_upstream_connections", proto="h1") == 0,
               what="the dedicated connection to close, not to be pooled")


def test_dedicated_connection_not_shared(muxd, ws_server):
    srv = ws_server()
    m = muxd()
    c, _ = ws_connect(m, srv)
    c.send("first")
    assert c.recv() == "first"
    # a normal request to the same origin while the WebSocket is open
    sock = connect(m.port, timeout=20)
    sock.sendall(proxy_request("GET", f"http://{LOCALHOST}:{srv.port}/plain"))
    resp = HTTPReader(sock).read_response()
    sock.close()
    assert resp.status == 200 and resp.body == b"a plain page\n"
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 2
    assert mt.value("muxd_upstream_connections", proto="h1", state="active") >= 1
    c.send("still mine")
    assert c.recv() == "still mine"
    close_handshake(c)


@pytest.mark.parametrize("conf,version", [({"muxd": {"upgrade": "none"}}, "HTTP/1.1"),
                                          ({"muxd": {"upgrade": "h2c, foo"}}, "HTTP/1.1"),
                                          (None, "HTTP/1.0")],
                         ids=["none", "not-listed", "http10"])
def test_upgrade_not_allowed_is_stripped(muxd, origin, conf, version):
    o = origin()
    m = muxd(conf)
    sock = connect(m.port, timeout=20)
    st, hdrs, reader, _ = handshake(sock, o.url("/ws"), o.authority, version=version)
    assert st == 200
    body = b"".join(reader.iter_body(hdrs, st))
    sock.close()
    import json
    names = [n.lower() for n, _ in json.loads(body)["headers"]]
    assert "upgrade" not in names
    assert "sec-websocket-key" in names  # end-to-end fields still go
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") == 1
    # an ordinary pooled request: its connection stays for the next one
    wait_until(lambda: m.metrics().value("muxd_upstream_connections", proto="h1", state="idle") == 1,
               what="the pooled connection to be idle")


def raw_origin(stream_server, after_head):
    """A scripted origin: reads a request head (and its Content-Length body),
    records them, then after_head(sock, head, body)."""
    seen = {}

    def handler(sock):
        reader = HTTPReader(sock)
        head = reader.read_until(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        seen["head"] = head
        seen["body"] = reader.read_exact(length)
        after_head(sock, reader)

    return stream_server(handler), seen


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_request_body_goes_before_the_switch(muxd, stream_server):
    def after(sock, reader):
        sock.sendall(SWITCH + b"early bytes|" + bytes(reader.buf))
        while (data := sock.recv(65536)):
            sock.sendall(data)

    srv, seen = raw_origin(stream_server, after)
    m = muxd()
    sock = connect(m.port, timeout=20)
    # the client's first bytes of the new protocol come right after its body:
    # they must wait for the switch, not be taken for a request
    sock.sendall(proxy_request("POST", f"http://{srv.authority}/up", body=b"the body",
                               headers=[("Upgrade", "websocket"), ("Connection", "upgrade")])
                 + b"client early|")
    reader = HTTPReader(sock)
    _, status, _, hdrs = reader.read_head()
    assert status == 101
    assert reader.read_exact(len(b"early bytes|")) == b"early bytes|"
    assert reader.read_exact(len(b"client early|")) == b"client early|"
    sock.sendall(b"raw after the switch")
    assert reader.read_exact(20) == b"raw after the switch"
    head = seen["head"].lower()
    assert b"\r\nupgrade: websocket\r\n" in head and b"\r\nconnection: upgrade\r\n" in head
    assert seen["body"] == b"the body"
    sock.shutdown(socket.SHUT_WR)  # the half-close reaches the origin, whose end comes back
    assert reader.wait_eof(10)
    sock.close()


@pytest.mark.parametrize("then", ["close", "silent"])
def test_origin_switches_then_closes_or_says_nothing(muxd, stream_server, then):
    def after(sock, reader):
        sock.sendall(SWITCH)
        if then == "silent":
            # say nothing; the server closes the socket at teardown
            sock.recv(1)  # until the tunnel is closed on us

    srv, _ = raw_origin(stream_server, after)
    m = muxd({"muxd": {"tunnel_idle_timeout": "1s"}})
    sock = connect(m.port, timeout=20)
    st, hdrs, reader, _ = handshake(sock, f"http://{srv.authority}/x", srv.authority)
    assert st == 101
    assert reader.wait_eof(15), "the client should see the end"
    sock.close()
    wait_until(lambda: m.metrics().sum("muxd_upstream_connections", proto="h1") == 0,
               what="the dedicated connection to close")


def test_switch_to_a_protocol_not_asked_for_is_502(muxd, stream_server):
    def after(sock, reader):
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        sock.recv(1)

    srv, _ = raw_origin(stream_server, after)
    m = muxd()
    sock = connect(m.port, timeout=20)
    st, hdrs, reader, _ = handshake(sock, f"http://{srv.authority}/x", srv.authority)
    assert st == 502
    sock.close()


def test_client_that_stops_reading_is_bounded(muxd, ws_server):
    flood = 64 * 1024 * 1024
    srv = ws_server(flood=flood)
    m = muxd()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(20)
    sock.connect((LOCALHOST, m.port))
    status, hdrs, reader, _ = handshake(sock, f"http://{LOCALHOST}:{srv.port}/flood",
                                        f"{LOCALHOST}:{srv.port}")
    assert status == 101
    before = vm_hwm_kib(m.pid)

    # the client reads nothing: the server gets stuck far short of the end
    def stalled():
        a = srv.flooded
        # no event says "held back": the count standing still for 0.5 s
        # (megabytes' worth on loopback) is the sign
        time.sleep(0.5)
        return a == srv.flooded and a > 0

    wait_until(stalled, timeout=20, what="the server to be held back")
    assert srv.flooded < flood // 4, f"{srv.flooded} bytes went out to a client that reads nothing"
    grown = vm_hwm_kib(m.pid) - before
    if not SANITIZE:
        assert grown < 8 * 1024, f"muxd grew by {grown} KiB"
    # then it reads, and everything arrives in order
    c = WsClient(sock, reader)
    chunk = pattern_bytes(1 << 20, seed=5)
    for _ in range(flood >> 20):
        assert c.recv() == chunk
    close_handshake(c)


def test_upgrade_to_an_h2_origin_goes_over_http11(muxd, nginx_h2, pki):
    """The pool would speak HTTP/2 to this origin; the dedicated connection
    of an upgrade offers ALPN http/1.1 only (nginx serves no WebSocket here:
    its 404 is relayed as a refused upgrade)."""
    m = muxd(intercept_conf(pki, nginx_h2.port))
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    for upgrade in (True, False):
        resp, reader = open_tunnel(m.port, nginx_h2.authority, timeout=20)
        assert resp.status == 200
        tls = ctx.wrap_socket(reader.sock, server_hostname=LOCALHOST)
        if upgrade:
            st, hdrs, r, _ = handshake(tls, "/no-such-socket", nginx_h2.authority)
            assert st == 404
            assert "close" in hdrs.tokens("connection")
        else:
            tls.sendall(f"GET /no-such-page HTTP/1.1\r\nHost: {nginx_h2.authority}\r\n\r\n".encode())
            assert HTTPReader(tls).read_response().status == 404
        tls.close()
    wait_until(lambda: len(nginx_h2.protocols()) == 2, what="nginx to log both requests")
    assert nginx_h2.protocols() == ["HTTP/1.1", "HTTP/2.0"]


def test_websocket_counts_against_max_connections(muxd, ws_server, origin):
    srv = ws_server()
    o = origin()
    m = muxd({"pool": {"max_connections": "1", "connect_timeout": "1s"}})
    c, _ = ws_connect(m, srv)

    def get():
        sock = connect(m.port, timeout=20)
        sock.sendall(proxy_request("GET", o.url("/x")))
        resp = HTTPReader(sock).read_response()
        sock.close()
        return resp

    assert get().status == 503  # the WebSocket holds the only slot
    close_handshake(c)
    wait_until(lambda: m.metrics().sum("muxd_upstream_connections", proto="h1") == 0,
               what="the WebSocket's connection to close")
    assert get().status == 200


def test_ws_through_an_http_parent_proxy(muxd, ws_server):
    """The dedicated connection follows the route: here to a parent that
    takes absolute-form requests (another muxd), which relays the upgrade
    in turn."""
    srv = ws_server()
    parent = muxd()
    m = muxd({"route *": {"proxy": f"http://{LOCALHOST}:{parent.port}"}})
    c, hdrs = ws_connect(m, srv)
    assert len([v for v in hdrs.get_all("via") if "muxd" in v]) >= 1
    c.send(b"via two proxies" * 1000)
    assert c.recv() == b"via two proxies" * 1000
    close_handshake(c)
    for p in (m, parent):
        assert p.metrics().value("muxd_upstream_connections_opened_total", proto="h1") == 1
