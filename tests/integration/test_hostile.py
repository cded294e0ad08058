"""Hostile origins cannot grow muxd or hurt bystanders (issue 16).

A scripted HTTP/1.1 origin (raw sockets) and a python-h2 origin
(h2origin.H2Origin) each perform one attack. Every test checks that muxd is
alive, that the attacked client gets the documented answer, that a bystander
(another client on the same connection or origin) gets its correct answer,
and that muxd's resident memory stays bounded during and after the attack.
Floods are bounded in count and time, so the whole file runs in well under a
minute.
"""

import os
import random
import socket
import string
import threading
import time

import hyperframe.frame
import pytest

from h2origin import ErrorCodes, StreamGone
from support import (
    SANITIZE,
    HTTPReader,
    IncompleteResponse,
    connect,
    proxy_request,
    wait_until,
)

MB = 1024 * 1024
# muxd idles at ~6 MB; the bound leaves room for the test's own buffers
# (64 KiB each way per exchange) and allocator slack. Under ASan RSS means
# nothing (shadow memory, quarantine): the bound is not checked.
RSS_BOUND_KIB = 48 * 1024


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def assert_rss(m, what=""):
    assert m.proc.poll() is None, f"muxd died: {m.log()[-2000:]}"
    rss = rss_kib(m.pid)
    if not SANITIZE:
        assert rss < RSS_BOUND_KIB, f"muxd RSS {rss} KiB >= {RSS_BOUND_KIB} KiB {what}"
    return rss


def conf(pki=None, **pool):
    c = {"pool": {"connect_timeout": "5s", "response_timeout": "5s"}}
    c["pool"].update(pool)
    if pki is not None:
        c["route *"] = {"ca_file": pki.ca_cert}
    return c


def fetch(m, url, method="GET", body=None, timeout=15):
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request(method, url, body=body))
        return HTTPReader(s).read_response(method)


def in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["r"] = fn(*args)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out["r"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def result(t, out, timeout=20):
    t.join(timeout)
    assert not t.is_alive(), "request did not finish in time"
    r = out["r"]
    if isinstance(r, Exception):
        raise r
    return r


def filler(n, seed=1):
    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters) for _ in range(n))


# --------------------------------------------------------------------------
# HTTP/1.1: a raw-socket origin


def read_request_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


class H1Script:
    """A raw origin: attack(sock, path) scripts the answer to requests
    whose path starts with /attack; every other request gets 200 "ok PATH"
    (keep-alive)."""

    def __init__(self, stream_server, attack):
        self.attack = attack
        self.errors = []
        self.server = stream_server(self.serve)

    def url(self, path):
        return f"http://127.0.0.1:{self.server.port}{path}"

    def serve(self, sock):
        while True:
            head, _ = read_request_head(sock)
            if head is None:
                return
            path = head.split(" ")[1]
            path = path[path.index("/", 8):] if path.startswith("http") else path
            if path.startswith("/attack"):
                try:
                    self.attack(sock, path, head)
                except OSError:
                    pass
                return
            body = f"ok {path}".encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def bystander_h1(m, origin):
    r = fetch(m, origin.url("/bystander"))
    assert r.status == 200 and r.body == b"ok /bystander", r


def test_h1_interim_flood_to_a_client_that_does_not_read(muxd, stream_server):
    """Endless ~42 KB 103 heads while the client reads nothing: after 16
    the stream is a protocol error (502); muxd's memory stays bounded."""
    sent = []
    big = filler(42000)

    def attack(sock, path, head):
        one = f"HTTP/1.1 103 Early Hints\r\nLink: <{big}>\r\n\r\n".encode()
        for i in range(2000):  # 84 MB if nobody stopped it
            sock.sendall(one)
            sent.append(i)

    o = H1Script(stream_server, attack)
    m = muxd(conf())
    s = connect(m.port, timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(proxy_request("GET", o.url("/attack")))
    # the origin stops being read once muxd gave up on the stream
    last = -1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        n = len(sent)
        assert_rss(m, f"during the flood ({n} heads sent)")
        if n == last and n > 0:
            break
        last = n
        # no event says "muxd stopped reading": the count standing still for
        # 0.3 s (many heads' worth of writes on loopback) is the sign
        time.sleep(0.3)
    assert len(sent) < 1000, f"muxd took {len(sent)} interim heads"
    resp = HTTPReader(s).read_response()
    s.close()
    assert resp.status == 502, resp
    assert b"interim" in resp.body, resp.body
    assert len(resp.interim) <= 16
    bystander_h1(m, o)
    assert_rss(m, "after the flood")


def test_h1_response_head_too_large(muxd, stream_server):
    def attack(sock, path, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")
        time.sleep(2)  # the origin holds the connection open: the 502 must not wait for EOF

    o = H1Script(stream_server, attack)
    m = muxd(conf())
    t0 = time.monotonic()
    r = fetch(m, o.url("/attack"))
    assert r.status == 502, r
    assert time.monotonic() - t0 < 1.5, "the 502 waited for the origin"
    bystander_h1(m, o)
    assert_rss(m)


def test_h1_early_close_mid_body(muxd, stream_server):
    """Content-Length 100000, 1000 bytes, EOF: the client's response is cut
    (no complete body), never passed off as whole."""

    def attack(sock, path, head):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)

    o = H1Script(stream_server, attack)
    m = muxd(conf())
    with pytest.raises(IncompleteResponse):
        fetch(m, o.url("/attack"))
    bystander_h1(m, o)
    assert_rss(m)


def test_h1_response_before_request(muxd, stream_server):
    """An origin that answers before reading the request: the first
    response is this request's (HTTP/1.1 cannot tell), and the extra bytes
    it sends afterwards never reach another client."""

    def serve(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        read_request_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlate!")
        time.sleep(1)  # the origin holds the connection open: no EOF ends the stray bytes

    srv = stream_server(serve)
    m = muxd(conf())
    url = f"http://127.0.0.1:{srv.port}/x"
    r1 = fetch(m, url)
    assert r1.status in (200, 502), r1
    # the connection that carried stray bytes is never reused
    r2 = fetch(m, url)
    assert r2.status in (200, 502) and r2.body != b"late!", r2
    assert_rss(m)


def test_h1_origin_that_reads_nothing_bounds_uploads(muxd, stream_server):
    """The origin accepts and never reads: a client uploading 100 MiB is
    held back (backpressure), muxd's memory stays bounded, and the client
    gets 504 when response_timeout fires."""
    done = threading.Event()

    def attack(sock, path, head):
        done.wait(20)  # the head was read: not one more byte

    o = H1Script(stream_server, attack)
    m = muxd(conf(response_timeout="3s"))
    s = connect(m.port, timeout=20)
    size = 100 * MB
    s.sendall(proxy_request("POST", o.url("/attack-upload"), headers=[("Content-Length", str(size))], body=b""))
    pushed = push_upload(m, s, size)
    assert_rss(m, f"after {pushed} bytes pushed")
    assert pushed < 32 * MB, f"muxd took {pushed} bytes of an upload nobody reads"
    bystander_h1(m, o)
    s.settimeout(15)
    resp = HTTPReader(s).read_response()
    assert resp.status == 504, resp
    s.close()
    done.set()
    assert_rss(m, "after the upload")


# --------------------------------------------------------------------------
# HTTP/2: a python-h2 origin


def ok(req, body=None):
    req.respond(200, [("content-type", "text/plain")], body if body is not None else f"ok {req.path}")


def h2_bystander_ok(r, path="/bystander"):
    assert not isinstance(r, Exception), r
    assert r.status == 200 and r.body == f"ok {path}".encode(), r


def attack_with_bystander(muxd, h2_origin, pki, attack, bystander_first=True, **origin_opts):
    """Start muxd and an h2 origin whose /attack handler runs attack(req)
    on connection 0 while a bystander's request is open on the same
    connection (answered only after the attack ran, unless the connection
    died: then a retry on another connection is answered at once)."""
    attacked = threading.Event()

    def handler(req):
        if req.path == "/bystander":
            if req.conn.id == 0:
                attacked.wait(10)
                # the attack's frames leave before the bystander's answer
                wait_until(lambda: not req.conn.outbuf or req.conn.closed.is_set(), timeout=10,
                           interval=0.01, what="the attack's frames written")
            ok(req)
            return
        if req.conn.id != 0:
            ok(req)  # a retried attacked request
            return
        try:
            attack(req)
        finally:
            attacked.set()

    o = h2_origin(handler, **origin_opts)
    m = muxd(conf(pki), args=["-v"])
    # the bystander opens the connection first: it is in flight when the
    # attack happens
    tb, ob = in_thread(fetch, m, o.url("/bystander"))
    wait_until(lambda: o.connections >= 1 and len(o.conn(0).requests) >= 1, what="bystander stream open")
    ta, oa = in_thread(fetch, m, o.url("/attack"))
    return o, m, (ta, oa), (tb, ob)


def test_h2_interim_flood_to_a_client_that_does_not_read(muxd, h2_origin, pki):
    """Endless ~42 KB 103 heads on one stream (HEADERS are not flow
    controlled) while that client reads nothing: 502 after 16 and a reset
    of that stream only; a bystander on the same connection is served."""
    big = filler(42000)
    sent = []

    def handler(req):
        if req.path != "/attack":
            ok(req)
            return
        try:
            for i in range(500):  # 21 MB
                req.send_head(103, [("link", f"<{big}{i}>")])
                sent.append(i)
        except StreamGone:
            pass

    o = h2_origin(handler)
    m = muxd(conf(pki))
    s = connect(m.port, timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(proxy_request("GET", o.url("/attack")))
    wait_until(lambda: any(r[3] == "/attack" for r in o.resets) or len(sent) >= 500, timeout=20,
               what="the flood to end")
    assert_rss(m, "during the flood")
    assert any(r[3] == "/attack" for r in o.resets), f"the stream was not reset after {len(sent)} heads"
    h2_bystander_ok(fetch(m, o.url("/bystander")))
    assert o.connections == 1, "the attack cost the shared connection"
    resp = HTTPReader(s).read_response()
    s.close()
    assert resp.status == 502 and b"interim" in resp.body, resp
    assert_rss(m, "after the flood")


@pytest.mark.parametrize("shape", ["one-field", "many-fields"])
def test_h2_header_block_too_large_is_a_stream_error(muxd, h2_origin, pki, shape):
    """A 100 KiB response head: 502 at once (not response_timeout) for that
    stream; a bystander's request on the same connection is answered."""

    def attack(req):
        if shape == "one-field":
            fields = [("x-big", filler(100 * 1024))]
        else:
            fields = [(f"x-f{i}", filler(1000, i)) for i in range(100)]
        req.send_head(200, fields + [("content-length", "0")], end_stream=True)

    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, attack)
    t0 = time.monotonic()
    ra = result(ta, oa)
    assert ra.status == 502, ra
    assert b"too large" in ra.body, (ra.body, o.errors)
    assert time.monotonic() - t0 < 4, "the 502 waited"
    h2_bystander_ok(result(tb, ob))
    # muxd told the origin its limit (a compliant origin never sends more)
    assert o.conn(0).h2.remote_settings.max_header_list_size == 64 * 1024
    if shape == "many-fields":
        assert o.connections == 1, "the large head cost the shared connection"
    # else nghttp2 cannot decode a field over 64 KiB, and HPACK state is
    # per connection: the connection ends, the bystander (nothing of its
    # response had arrived) went again on a new one
    assert_rss(m)


@pytest.mark.parametrize("then", ["close", "abort"])
def test_h2_goaway_last_stream_id_zero_retries_bystanders(muxd, h2_origin, pki, then):
    """GOAWAY(last_stream_id=0): the origin processed nothing, so every
    request in flight goes again on a new connection, invisibly (also when
    the origin drops the connection right after its GOAWAY)."""

    def attack(req):
        req.conn.goaway(last_stream_id=0)
        if then == "close":
            # a graceful close, once muxd has acted on the GOAWAY (its new
            # connection is there); "abort" is the abrupt variant
            wait_until(lambda: req.conn.origin.connections >= 2, timeout=10, what="muxd's new connection")
            req.conn.close()
        else:
            wait_until(lambda: not req.conn.outbuf, timeout=5, interval=0.001, what="GOAWAY written")
            req.conn.abort()

    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, attack)
    ra = result(ta, oa)
    assert ra.status == 200 and ra.body == b"ok /attack", ra
    h2_bystander_ok(result(tb, ob))
    assert o.connections == 2
    assert_rss(m)


def test_h2_goaway_zero_retries_a_post_whose_body_muxd_holds(muxd, h2_origin, pki):
    """A POST with a small body was sent on the connection when the origin
    says GOAWAY(last_stream_id=0): it was never processed, and muxd still
    holds its body, so it goes again on a new connection, body intact."""
    body = os.urandom(5000)
    first_seen = threading.Event()

    def handler(req):
        if req.conn.id == 0:
            first_seen.set()
            req.conn.goaway(last_stream_id=0)
            # close once muxd has acted on the GOAWAY (its new connection is there)
            wait_until(lambda: req.conn.origin.connections >= 2, timeout=10, what="muxd's new connection")
            req.conn.close()
            return
        req.respond(200, [], b"got %d %s" % (len(req.body), req.body[:8].hex().encode()))

    o = h2_origin(handler)
    m = muxd(conf(pki), args=["-v"])
    r = fetch(m, o.url("/post"), method="POST", body=body)
    assert r.status == 200, r
    assert r.body == b"got %d %s" % (len(body), body[:8].hex().encode()), r.body
    assert [len(q.body) for q in o.conn(1).requests] == [len(body)]
    assert_rss(m)


def test_h2_connection_abort_before_any_response_retries(muxd, h2_origin, pki):
    """The origin drops the connection with two streams open and nothing
    answered: both GETs are retried on a new connection."""

    def attack(req):
        req.conn.abort()

    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, attack)
    h2_bystander_ok(result(tb, ob))
    ra = result(ta, oa)
    assert ra.status == 200 and ra.body == b"ok /attack", ra
    assert_rss(m)


def push_upload(m, s, size, seconds=10):
    """Send up to size body bytes on s until muxd stops taking them for a
    second; returns how many it took."""
    s.setblocking(False)
    chunk = b"u" * 65536
    pushed, stalled_since = 0, None
    deadline = time.monotonic() + seconds
    while pushed < size and time.monotonic() < deadline:
        try:
            pushed += s.send(chunk[: size - pushed])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            # no event says "muxd stopped reading": a second without room in
            # the socket buffer is the sign (muxd drains it in microseconds)
            if time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
    s.setblocking(True)
    return pushed


def test_h2_origin_that_reads_nothing_bounds_uploads(muxd, h2_origin, pki):
    """The origin never opens its flow-control windows: a 100 MiB upload
    stalls (at most a window and a buffer in muxd), the client gets 504
    after response_timeout, and a bystander on the same connection is
    served meanwhile."""
    o = h2_origin(ok, ack_data=False)
    c = conf(pki, response_timeout="3s")
    m = muxd(c)
    h2_bystander_ok(fetch(m, o.url("/first")), "/first")
    size = 100 * MB
    s = connect(m.port, timeout=20)
    s.sendall(proxy_request("POST", o.url("/up"), headers=[("Content-Length", str(size))], body=b""))
    pushed = push_upload(m, s, size)
    assert_rss(m, f"after {pushed} bytes pushed")
    assert pushed < 32 * MB, f"muxd took {pushed} bytes of an upload nobody reads"
    h2_bystander_ok(fetch(m, o.url("/bystander")))
    assert o.connections == 1
    s.settimeout(15)
    resp = HTTPReader(s).read_response()
    s.close()
    assert resp.status == 504, resp
    assert_rss(m, "after the upload")


def frames(frame, n):
    return frame.serialize() * n


def ping_flood(req):
    f = hyperframe.frame.PingFrame(0)
    f.opaque_data = b"12345678"
    req.conn.send_raw(frames(f, 5000))


def settings_flood(req):
    req.conn.send_raw(frames(hyperframe.frame.SettingsFrame(0), 5000))


def window_update_flood(req):
    f = hyperframe.frame.WindowUpdateFrame(0)
    f.window_increment = 1
    req.conn.send_raw(frames(f, 30000))


def empty_data_flood(req):
    req.send_head(200, [("content-length", "2")])
    req.conn.send_raw(frames(hyperframe.frame.DataFrame(req.stream_id), 5000))


def rst_flood(req):
    # resets of a stream that is already closed (the bystander's earlier
    # sibling), over and over: "rapid reset" from the server's side
    f = hyperframe.frame.RstStreamFrame(1)
    f.error_code = ErrorCodes.CANCEL
    req.conn.send_raw(frames(f, 5000))


def continuation_flood(req):
    c = hyperframe.frame.ContinuationFrame(req.stream_id)
    req.conn.raw_headers(req.stream_id, [(":status", "200")], end_headers=False, extra=frames(c, 2000))


@pytest.mark.parametrize(
    "flood", [ping_flood, settings_flood, window_update_flood, empty_data_flood, rst_flood, continuation_flood],
    ids=lambda f: f.__name__)
def test_h2_control_frame_floods_end_the_connection(muxd, h2_origin, pki, flood):
    """A burst of useless frames ends that connection (ENHANCE_YOUR_CALM);
    the requests on it that were never answered go again on a new one."""

    def handler(req):
        if req.conn.id == 0 and req.path == "/first":
            ok(req)  # stream 1: closed before the flood
            return
        if req.conn.id == 0 and req.path == "/attack":
            flood(req)
            time.sleep(3)  # the origin holds the stream open: only the flood may end it
            return
        if req.conn.id == 0:
            time.sleep(3)  # the bystander waits on the flooded connection
            return
        ok(req)

    o = h2_origin(handler)
    m = muxd(conf(pki), args=["-v"])
    h2_bystander_ok(fetch(m, o.url("/first")), "/first")
    tb, ob = in_thread(fetch, m, o.url("/bystander"))
    wait_until(lambda: len(o.conn(0).requests) >= 2, what="bystander stream open")
    ta, oa = in_thread(fetch, m, o.url("/attack"))
    wait_until(lambda: o.conn(0).closed.is_set(), timeout=10, what="the flooded connection to end")
    h2_bystander_ok(result(tb, ob))
    if flood is empty_data_flood:
        # its head had arrived: the response is cut, never passed off as whole
        with pytest.raises(IncompleteResponse):
            result(ta, oa)
    else:
        ra = result(ta, oa)
        assert ra.status in (200, 502), ra
        if ra.status == 200:
            assert ra.body == b"ok /attack"
    assert_rss(m)
    if flood is not continuation_flood:  # nghttp2's own limit, before ours
        assert "flood" in m.log(), m.log()[-3000:]
        kind = {ping_flood: "ping", settings_flood: "settings", window_update_flood: "window_update",
                empty_data_flood: "empty_data", rst_flood: "rst_stream"}[flood]
        assert m.metrics().value("muxd_upstream_flood_total", proto="h2", kind=kind) == 1


def invalid_pseudo(req):
    req.conn.raw_headers(req.stream_id, [(":status", "200"), (":path", "/x")], end_stream=True)


def uppercase_name(req):
    req.conn.raw_headers(req.stream_id, [(":status", "200"), ("Content-Type", "text/plain")], end_stream=True)


def connection_specific(req):
    req.conn.raw_headers(req.stream_id, [(":status", "200"), ("connection", "keep-alive")], end_stream=True)


def window_overflow(req):
    f = hyperframe.frame.WindowUpdateFrame(req.stream_id)
    f.window_increment = 2**31 - 1
    req.conn.send_raw(f.serialize())


@pytest.mark.parametrize("attack", [invalid_pseudo, uppercase_name, connection_specific, window_overflow],
                         ids=lambda f: f.__name__)
def test_h2_stream_errors_reach_only_their_stream(muxd, h2_origin, pki, attack):
    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, attack)
    ra = result(ta, oa)
    h2_bystander_ok(result(tb, ob))
    if attack is window_overflow:
        # no response byte had arrived: the GET may go once more (and is
        # answered by the origin's next connection)
        assert ra.status == 502 or ra.body == b"ok /attack", ra
    else:
        assert ra.status == 502, ra
    # the bystander was answered on the shared connection, never retried
    assert [r.conn.id for r in o.requests if r.path == "/bystander"] == [0]
    assert not o.conn(0).closed.is_set() or o.conn(0).goaway_received is None
    assert_rss(m)


def data_on_closed_stream(req):
    req.respond(200, [], b"ok /attack")
    f = hyperframe.frame.DataFrame(req.stream_id)
    f.data = b"stray"
    req.conn.send_raw(f.serialize() * 3)


def test_h2_data_on_a_closed_stream(muxd, h2_origin, pki):
    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, data_on_closed_stream)
    ra = result(ta, oa)
    assert ra.status == 200 and ra.body == b"ok /attack", ra
    h2_bystander_ok(result(tb, ob))
    assert_rss(m)


def push_promise(req):
    f = hyperframe.frame.PushPromiseFrame(req.stream_id)
    f.promised_stream_id = 2
    with req.conn.lock:
        f.data = req.conn.h2.encoder.encode([(":method", "GET"), (":scheme", "https"), (":path", "/pushed"),
                                             (":authority", req.authority)])
    f.flags = {"END_HEADERS"}
    req.conn.send_raw(f.serialize())
    req.conn.closed.wait(10)  # until muxd ends the connection for the connection error


def garbage_after_preface(req):
    req.conn.send_raw(os.urandom(64) + b"\x00" * 64)
    req.conn.closed.wait(10)  # until muxd ends the connection for the connection error


@pytest.mark.parametrize("attack", [push_promise, garbage_after_preface], ids=lambda f: f.__name__)
def test_h2_connection_errors_retry_unanswered_requests(muxd, h2_origin, pki, attack):
    """A connection error (push promise we disabled, garbage): the
    connection ends; requests on it that got no response byte go again."""
    o, m, (ta, oa), (tb, ob) = attack_with_bystander(muxd, h2_origin, pki, attack)
    h2_bystander_ok(result(tb, ob))
    ra = result(ta, oa)
    assert ra.status in (200, 502), ra
    assert_rss(m)


# --------------------------------------------------------------------------
# after the storm


@pytest.mark.skipif(SANITIZE, reason="RSS means nothing under ASan")
def test_memory_returns_near_idle_after_a_burst(muxd, tls_nginx_factory, pki):
    """300 concurrent 1 MiB downloads over HTTP/2 lift RSS well above idle;
    once the last client is gone muxd gives the free heap back (malloc_trim:
    glibc keeps the peak otherwise: 6.8 -> 13.7 MB here) and RSS returns to within
    2 MiB of its idle level."""
    from concurrent.futures import ThreadPoolExecutor

    ng = tls_nginx_factory(http2=True)
    (ng.root / "f").write_bytes(b"x" * MB)
    m = muxd(conf(pki))
    # idle, with the pool's connection and TLS state already made
    r = fetch(m, ng.url("/f"))
    assert r.status == 200 and len(r.body) == MB
    # muxd trims its heap 1 s after the last client left, and shows no sign
    # of it (no metric, no log line): 1.5 s is that timer and a margin
    time.sleep(1.5)
    idle = rss_kib(m.pid)

    def one(i):
        with connect(m.port, timeout=60) as s:
            s.sendall(proxy_request("GET", ng.url("/f")))
            rd = HTTPReader(s)
            _, status, _, h = rd.read_head()
            n = 0
            for piece in rd.iter_body(h):
                n += len(piece)
                time.sleep(0.001)  # slow readers: muxd holds their buffers
            return status, n

    with ThreadPoolExecutor(150) as ex:
        got = list(ex.map(one, range(300)))
    assert all(g == (200, MB) for g in got), [g for g in got if g != (200, MB)][:3]
    peak = rss_kib(m.pid)
    try:
        wait_until(lambda: rss_kib(m.pid) < idle + 2048, timeout=5, interval=0.2,
                   what="RSS back within 2 MiB of idle")
    finally:
        print(f"muxd RSS idle {idle} KiB, after the burst {peak} KiB, now {rss_kib(m.pid)} KiB")
