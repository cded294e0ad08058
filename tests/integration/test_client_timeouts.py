"""Client deadlines ([muxd] request_header_timeout, client_idle_timeout,
client_timeout): a client that connects and says nothing, sends half a head,
sits idle on a keep-alive connection, opens an intercepted CONNECT and never
finishes (or never starts) its TLS handshake, or stops reading in the middle
of a response or stops sending in the middle of an upload must not hold a
max_clients slot for ever.

The clients are silent sockets of the tests' own; the timeouts are set to
1 s, and each test only asserts that muxd answered or closed within a
generous deadline.
"""

import socket
import ssl
import time

import pytest

from support import (
    HTTPReader,
    connect,
    open_tunnel,
    proxy_request,
)

SHORT = "1s"
DEADLINE = 8.0  # far beyond the 1 s timeouts, far below the defaults


def read_until_closed(sock, timeout=DEADLINE):
    """Read and keep what arrives until the peer closes (EOF or reset).
    Returns (bytes, closed): closed is False when the deadline passed first."""
    data = bytearray()
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return bytes(data), False
        sock.settimeout(left)
        try:
            piece = sock.recv(1 << 16)
        except socket.timeout:
            return bytes(data), False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return bytes(data), True
        if not piece:
            return bytes(data), True
        data += piece


def conf(**muxd):
    c = {"muxd": {"request_header_timeout": "30s", "client_idle_timeout": "30s", "client_timeout": "30s"}}
    c["muxd"].update(muxd)
    c["intercept"] = {"enabled": "off"}
    return c


# --------------------------------------------------------------------------
# request_header_timeout


def test_silent_client_gets_408_and_close(muxd):
    m = muxd(conf(request_header_timeout=SHORT))
    with connect(m.port) as s:
        data, closed = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"Connection: close" in data
    assert closed, "muxd kept the connection open after its 408"


def test_half_sent_head_gets_408_and_close(muxd, origin):
    """The deadline covers the whole head: bytes dribbling in (one every
    0.3 s, each well within the timeout) do not extend it."""
    origin = origin()
    m = muxd(conf(request_header_timeout=SHORT))
    head = proxy_request("GET", origin.url("/never"))
    with connect(m.port) as s:
        s.sendall(head[:20])
        data = b""
        for b in head[20:-4]:  # never the blank line
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            s.settimeout(0.3)
            try:
                data = s.recv(4096)
                break
            except socket.timeout:
                continue
        rest, closed = read_until_closed(s)
        data += rest
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert closed
    assert not origin.requests, "the half head reached the origin"


def test_header_timeout_inside_an_intercepted_session(muxd, stream_server):
    """After the client's TLS handshake the first request head must come
    within request_header_timeout too: 408 inside the TLS session."""
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"muxd": {"request_header_timeout": SHORT, "connect_ports": silent.port},
              "intercept": {"ports": silent.port}})
    resp, reader = open_tunnel(m.port, f"localhost:{silent.port}")
    assert resp.status == 200, resp
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    with ctx.wrap_socket(reader.sock, server_hostname="localhost") as tls:
        data, closed = read_until_closed(tls)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert closed


# --------------------------------------------------------------------------
# client_idle_timeout


def test_idle_keep_alive_client_is_closed(muxd, origin):
    origin = origin()
    m = muxd(conf(client_idle_timeout=SHORT))
    with connect(m.port) as s:
        s.sendall(proxy_request("GET", origin.url("/first")))
        resp = HTTPReader(s).read_response()
        assert resp.status == 200, resp
        assert "close" not in resp.headers.tokens("connection")
        start = time.monotonic()
        data, closed = read_until_closed(s)
        waited = time.monotonic() - start
    assert closed, "an idle keep-alive connection stayed open"
    assert data == b"", f"an idle connection is closed without an answer: {data[:200]!r}"
    assert waited >= 0.5, f"closed after {waited:.2f}s, before client_idle_timeout"


def test_keep_alive_client_within_idle_timeout_is_served(muxd, origin):
    """Requests spaced under client_idle_timeout keep their connection."""
    origin = origin()
    m = muxd(conf(client_idle_timeout="3s", request_header_timeout="3s"))
    with connect(m.port) as s:
        reader = HTTPReader(s)
        for i in range(3):
            s.sendall(proxy_request("GET", origin.url(f"/r{i}")))
            assert reader.read_response().status == 200
            time.sleep(0.5)  # idle between requests, well under the timeout
    assert origin.connections == 1


def test_keep_alive_client_busy_past_idle_timeout_is_served(muxd, origin):
    """client_idle_timeout counts from the last response, not from the first
    idle spell: requests spaced under it go on being served for longer than
    the timeout, and the connection closes once it has been idle for it."""
    origin = origin()
    m = muxd(conf(client_idle_timeout=SHORT))
    with connect(m.port) as s:
        reader = HTTPReader(s)
        for i in range(6):  # 2.4 s in all, more than twice the timeout
            s.sendall(proxy_request("GET", origin.url(f"/r{i}")))
            assert reader.read_response().status == 200, f"request {i}"
            time.sleep(0.4)  # idle between requests, well under the timeout
        data, closed = read_until_closed(s)
    assert closed and data == b"", data[:200]
    assert origin.connections == 1


def test_half_head_after_a_response_gets_408(muxd, origin):
    """A head that starts on a keep-alive connection gets its own deadline,
    request_header_timeout, though the idle deadline before it was longer."""
    origin = origin()
    m = muxd(conf(request_header_timeout=SHORT, client_idle_timeout="30s"))
    with connect(m.port) as s:
        reader = HTTPReader(s)
        s.sendall(proxy_request("GET", origin.url("/first")))
        assert reader.read_response().status == 200
        s.sendall(proxy_request("GET", origin.url("/never"))[:30])
        data, closed = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert closed


def test_connect_without_client_hello_is_closed(muxd, stream_server):
    """An intercepted CONNECT whose client never says anything: after the
    peek it is a tunnel to a (silent) origin that neither side ever used;
    client_idle_timeout ends it, not tunnel_idle_timeout (10 min)."""
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"muxd": {"client_idle_timeout": SHORT, "connect_ports": silent.port},
              "intercept": {"ports": silent.port}})
    resp, reader = open_tunnel(m.port, f"localhost:{silent.port}")
    with reader.sock as s:
        assert resp.status == 200, resp
        data, closed = read_until_closed(s)
    assert closed, "a CONNECT that never sent a byte stayed open"
    assert bytes(reader.buf) + data == b""


@pytest.mark.parametrize("sent", ["record header", "half a ClientHello"])
def test_unfinished_client_hello_is_closed(muxd, stream_server, sent):
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"muxd": {"client_idle_timeout": SHORT, "connect_ports": silent.port},
              "intercept": {"ports": silent.port}})
    # a real ClientHello, cut short
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    part = hello[:5] if sent == "record header" else hello[: len(hello) // 2]
    resp, reader = open_tunnel(m.port, f"localhost:{silent.port}", early=part)
    with reader.sock as s:
        assert resp.status == 200, resp
        _, closed = read_until_closed(s)
    assert closed, "an unfinished TLS handshake held the connection"
    assert m.metrics().value("muxd_client_connections") == 1  # only the /metrics one


# --------------------------------------------------------------------------
# client_timeout


@pytest.fixture
def big_file(nginx):
    (nginx.root / "big").write_bytes(b"x" * (48 << 20))
    return nginx.url("/big")


def test_client_that_stops_reading_is_closed_and_its_slot_freed(muxd, big_file):
    """max_clients = 1: a client that asks for 48 MiB and never reads holds
    the only slot until client_timeout closes it; the next client, waiting
    in the listen backlog, is then served."""
    m = muxd(conf(client_timeout=SHORT, max_clients=1))
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", m.port))
    try:
        stuck.sendall(proxy_request("GET", big_file))
        # muxd has accepted it (and holds the only slot) once the response
        # starts arriving; MSG_PEEK leaves it unread
        stuck.settimeout(DEADLINE + 5)
        assert stuck.recv(1, socket.MSG_PEEK), "muxd closed the first client at once"
        with connect(m.port, timeout=DEADLINE + 5) as s:
            start = time.monotonic()
            s.sendall(proxy_request("GET", big_file, headers=[("Range", "bytes=0-9")]))
            resp = HTTPReader(s).read_response()
            waited = time.monotonic() - start
        assert resp.status == 206, resp
        assert resp.body == b"x" * 10
        assert waited < DEADLINE, f"served after {waited:.1f}s"
        _, closed = read_until_closed(stuck, timeout=2)
        assert closed, "the client that stopped reading is still connected"
    finally:
        stuck.close()


def test_client_that_stops_sending_its_body_is_closed(muxd, origin):
    origin = origin()
    m = muxd(conf(client_timeout=SHORT))
    with connect(m.port) as s:
        head = proxy_request("POST", origin.url("/upload"), headers=[("Content-Length", "100000")])
        s.sendall(head + b"y" * 1000)
        start = time.monotonic()
        data, closed = read_until_closed(s)
        waited = time.monotonic() - start
    assert closed, "a stalled upload held the connection"
    assert waited >= 0.5


def test_slow_response_is_not_a_client_timeout(muxd, origin):
    """client_timeout counts only while muxd waits on the client: an origin
    that takes longer than it to answer is response_timeout's business."""
    def slow(req, conn):
        time.sleep(2.5)  # the origin's slowness under test: longer than client_timeout
        conn.respond(200, body=b"late")

    origin = origin(slow)
    m = muxd(conf(client_timeout=SHORT))
    with connect(m.port) as s:
        s.sendall(proxy_request("GET", origin.url("/slow")))
        resp = HTTPReader(s).read_response()
    assert resp.status == 200 and resp.body == b"late", resp


def test_slow_reader_of_a_finished_response_keeps_its_connection(muxd, nginx):
    """The origin's response is wholly in muxd (the exchange is over) but
    the client is still reading its tail, slowly and steadily, for longer
    than client_idle_timeout: that is not idleness.  The connection stays
    until the last byte went out (client_timeout counts while bytes wait),
    and the body arrives whole."""
    size = 4 << 20
    (nginx.root / "tail").write_bytes(b"t" * size)
    m = muxd(conf(client_idle_timeout=SHORT, client_timeout="5s"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", m.port))
    with s:
        s.sendall(proxy_request("GET", nginx.url("/tail")))
        got = bytearray()
        s.settimeout(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            piece = s.recv(65536)
            if not piece:
                break
            got += piece
            if b"\r\n\r\n" in got and len(got) - got.index(b"\r\n\r\n") - 4 >= size:
                break
            time.sleep(0.02)  # a slow but steady reader (under 1 MB/s)
    body = bytes(got[got.index(b"\r\n\r\n") + 4 :])
    assert len(body) == size, f"{len(body)} of {size} bytes: the connection was cut"


def test_steady_slow_reader_outlives_client_timeout(muxd, nginx):
    """client_timeout is about silence, not duration: a client that takes a
    response several times longer than client_timeout, but takes bytes all
    the while, keeps its connection and gets the whole body (muxd stamps
    each move and, when the timer fires, waits out the rest from the last
    one)."""
    size = 4 << 20
    (nginx.root / "steady").write_bytes(b"s" * size)
    m = muxd(conf(client_timeout=SHORT))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", m.port))
    with s:
        s.sendall(proxy_request("GET", nginx.url("/steady")))
        got = bytearray()
        s.settimeout(10)
        start = time.monotonic()
        deadline = start + 60
        while time.monotonic() < deadline:
            piece = s.recv(16384)
            if not piece:
                break
            got += piece
            if b"\r\n\r\n" in got and len(got) - got.index(b"\r\n\r\n") - 4 >= size:
                break
            time.sleep(0.01)  # about 1.5 MB/s at most: several client_timeouts long
        took = time.monotonic() - start
    body = bytes(got[got.index(b"\r\n\r\n") + 4 :])
    assert len(body) == size, f"{len(body)} of {size} bytes after {took:.1f}s: the connection was cut"
    assert took > 2, f"read in {took:.1f}s, not longer than client_timeout: the test proves nothing"
