"""HTTP/2 to origins: absolute-form https:// requests from plain HTTP/1.1
clients travel as streams of shared HTTP/2 connections (ALPN h2).

nginx (``listen ... ssl http2``) is the real-world origin; h2origin.H2Origin
is the scripted one, for what nginx will not do on demand: GOAWAY with
streams in flight, a small SETTINGS_MAX_CONCURRENT_STREAMS, RST_STREAM on one
stream, unanswered PINGs, trailers, 1xx, and watching muxd's RST_STREAM
frames.
"""

import hashlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from h2origin import ErrorCodes
from support import (
    SANITIZE,
    HTTPReader,
    IncompleteResponse,
    connect,
    pattern_bytes,
    pattern_chunks,
    proxy_request,
    sha256,
    vm_hwm_kib,
    wait_until,
)

MB = 1024 * 1024
RSS_LIMIT_KIB = 48 * 1024


def conf(pki, pool=None, **sections):
    """Config trusting the test CA for every origin, plus [pool] keys."""
    c = {"route *": {"ca_file": pki.ca_cert}}
    if pool:
        c["pool"] = dict(pool)
    c.update(sections)
    return c


def fetch(m, url, method="GET", headers=(), body=None, timeout=20, barrier=None):
    """One absolute-form request on its own client connection.  With a
    barrier, the request is sent when all parties are ready."""
    s = connect(m.port, timeout=timeout)
    try:
        data = proxy_request(method, url, headers, body)
        if barrier is not None:
            barrier.wait(timeout)
        s.sendall(data)
        return HTTPReader(s).read_response(method)
    finally:
        s.close()


def concurrently(n, fn, timeout=60):
    """Run fn(i, barrier) in n threads at once; results in order (an
    exception is returned in place of its result)."""
    barrier = threading.Barrier(n)
    out = [None] * n
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(fn, i, barrier) for i in range(n)]
        for i, f in enumerate(futures):
            try:
                out[i] = f.result(timeout)
            except Exception as e:  # noqa: BLE001 - reported by the caller
                out[i] = e
    return out


def assert_all_ok(results, bodies=None, what=""):
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception) or r.status != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]} {what}"
    if bodies is not None:
        for i, r in enumerate(results):
            assert r.body == bodies(i), f"request {i}: body differs ({len(r.body)} bytes)"


def opened(m, proto="h2"):
    return m.metrics().value("muxd_upstream_connections_opened_total", proto=proto)


def no_origin_errors(o):
    assert not o.errors, f"the scripted origin reported: {o.errors}"


def text_handler(delay=0.0):
    """Answer 200 text "PATH conn=N" after delay seconds."""

    def handler(req):
        if delay:
            time.sleep(delay)  # the origin's pace: requests overlap while it thinks
        req.respond(200, [("content-type", "text/plain")], f"{req.path} conn={req.conn.id}")

    return handler


# --------------------------------------------------------------------------
# nginx


def test_forty_clients_one_h2_connection_nginx(muxd, nginx_h2, pki):
    body = pattern_bytes(16 * 1024, seed=21)
    (nginx_h2.root / "16k").write_bytes(body)
    m = muxd(conf(pki))
    results = concurrently(40, lambda i, b: fetch(m, nginx_h2.url("/16k"), barrier=b))
    assert_all_ok(results, lambda i: body)
    for r in results:  # the length is known: no chunking for the client
        assert r.headers.get("content-length") == str(len(body)), r

    wait_until(lambda: len(nginx_h2.log_lines()) >= 40, timeout=5, what="nginx access log")
    assert len(nginx_h2.log_lines()) == 40
    assert set(nginx_h2.protocols()) == {"HTTP/2.0"}, nginx_h2.protocols()
    conns = nginx_h2.connections()
    assert len(conns) == 1, f"nginx saw {len(conns)} connections: {nginx_h2.log_lines()[:5]}"
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 1
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h1") == 0
    assert metrics.value("muxd_requests_total", proto="h2") == 40
    assert metrics.sum("muxd_upstream_connections", proto="h2") == 1


@pytest.mark.parametrize("where", ["route", "pool"])
def test_h2_off_uses_http11(muxd, nginx_h2, pki, where):
    body = pattern_bytes(4096, seed=22)
    (nginx_h2.root / "4k").write_bytes(body)
    if where == "route":
        c = conf(pki, **{f"route {nginx_h2.authority}": {"h2": "off"}})
    else:
        c = conf(pki, pool={"h2": "off"})
    m = muxd(c)
    for i in range(3):
        r = fetch(m, nginx_h2.url("/4k"))
        assert r.status == 200, f"request {i}: {r}"
        assert r.body == body
    wait_until(lambda: len(nginx_h2.log_lines()) >= 3, timeout=5, what="nginx access log")
    assert nginx_h2.protocols() == ["HTTP/1.1"] * 3
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 0
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h1") >= 1
    assert metrics.value("muxd_requests_total", proto="h1") == 3
    assert metrics.value("muxd_requests_total", proto="h2") == 0


# --------------------------------------------------------------------------
# the scripted origin


def test_cold_origin_coalesces_setup(muxd, h2_origin, pki):
    o = h2_origin(text_handler(0.1))
    m = muxd(conf(pki))
    results = concurrently(20, lambda i, b: fetch(m, o.url(f"/c{i}"), barrier=b))
    assert_all_ok(results, lambda i: f"/c{i} conn=0".encode())
    assert o.connections == 1, f"the origin saw {o.connections} TLS connections"
    assert len(o.conn(0).requests) == 20
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 1
    assert metrics.value("muxd_requests_total", proto="h2") == 20

    def idle():
        metrics = m.metrics()
        return (metrics.value("muxd_upstream_connections", proto="h2", state="idle") == 1
                and metrics.value("muxd_upstream_connections", proto="h2", state="active") == 0)

    wait_until(idle, timeout=5, what="the h2 connection to be idle")
    no_origin_errors(o)


def test_client_abort_resets_only_its_stream(muxd, h2_origin, pki):
    one_mb = pattern_bytes(MB, seed=23)
    big = 100 * MB
    sent_big = []

    def handler(req):
        if req.path == "/big":
            req.send_head(200, [("content-length", str(big))])
            n = 0
            for chunk in pattern_chunks(big, seed=24):
                req.send_data(chunk)  # raises StreamGone once muxd resets it
                n += len(chunk)
                sent_big.append(n)
            req.send_data(b"", end_stream=True)
        else:
            req.respond(200, [], one_mb)

    o = h2_origin(handler)
    m = muxd(conf(pki))
    aborter = connect(m.port, timeout=20)
    try:
        aborter.sendall(proxy_request("GET", o.url("/big")))
        reader = HTTPReader(aborter)
        _, status, _, headers = reader.read_head()
        assert status == 200
        body = reader.iter_body(headers)
        got = 0
        while got < 10 * MB:
            got += len(next(body))

        def download(i, barrier):
            return fetch(m, o.url(f"/1m/{i}"), barrier=barrier, timeout=30)

        ex = ThreadPoolExecutor(1)
        fut = ex.submit(concurrently, 30, download)
        # abort while the others are downloading
        wait_until(lambda: sum(r.path.startswith("/1m/") for r in o.requests) >= 10, timeout=10,
                   what="the 1 MB downloads to start")
    finally:
        aborter.close()
    results = fut.result()
    ex.shutdown()
    assert_all_ok(results, lambda i: one_mb)

    big_streams = [r.stream_id for r in o.requests if r.path == "/big"]
    assert len(big_streams) == 1
    wait_until(lambda: o.resets, timeout=5, what="muxd to reset the aborted stream")
    assert o.resets == [(0, big_streams[0], ErrorCodes.CANCEL, "/big")], o.resets
    assert sent_big[-1] < big, "the origin sent the whole 100 MB"

    # the connection survived: one more request goes over it
    r = fetch(m, o.url("/1m/after"))
    assert r.status == 200 and r.body == one_mb
    assert o.connections == 1, f"the origin saw {o.connections} connections"
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 1
    assert metrics.sum("muxd_upstream_connections", proto="h2") == 1
    no_origin_errors(o)


@pytest.mark.parametrize("order", ["answer-then-goaway", "goaway-then-answer"])
def test_goaway_retries_streams_above_last_id(muxd, h2_origin, pki, order):
    """Connection 0 takes 3 streams (1, 3, 5), sends GOAWAY(last_stream_id=1)
    and answers only stream 1 (before or after the GOAWAY), then closes.
    Streams 3 and 5 are retried on a new connection; stream 1 finishes."""
    goaway_sent = threading.Event()

    def handler(req):
        c = req.conn
        if c.id != 0:
            req.respond(200, [], f"{req.path} conn={c.id}")
            return
        wait_until(lambda: len(c.requests) >= 3, timeout=5, what="3 streams on connection 0")
        if req.stream_id != 1:
            return  # never answered: above last_stream_id
        if order == "answer-then-goaway":
            req.respond(200, [], f"{req.path} conn={c.id}")
            c.goaway(last_stream_id=1)
            goaway_sent.set()
        else:
            c.goaway(last_stream_id=1)
            goaway_sent.set()
            # stream 1 still runs while muxd retries 3 and 5 on a new connection
            wait_until(lambda: o.connections >= 2 and len(o.conn(1).requests) >= 2, timeout=10,
                       what="streams 3 and 5 retried on a second connection")
            req.respond(200, [], f"{req.path} conn={c.id}")
        c.close()

    o = h2_origin(handler)
    m = muxd(conf(pki), args=["-v"])
    results = concurrently(3, lambda i, b: fetch(m, o.url(f"/g{i}"), barrier=b))
    assert_all_ok(results)
    assert goaway_sent.is_set()
    served = sorted(r.body.decode().split()[1] for r in results)
    assert served == ["conn=0", "conn=1", "conn=1"], [r.body for r in results]
    assert o.connections == 2, f"the origin saw {o.connections} connections"
    c0 = o.conn(0)
    assert sorted(r.stream_id for r in c0.requests) == [1, 3, 5], "a new stream was opened after GOAWAY"
    assert len(o.conn(1).requests) == 2
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_retries_total") >= 2
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 2
    no_origin_errors(o)


def test_max_concurrent_streams_honoured(muxd, h2_origin, pki):
    """SETTINGS_MAX_CONCURRENT_STREAMS = 2 and slow answers: 8 clients, at
    most 3 connections (max_h2_per_origin), never more than 2 streams open
    on one of them; the rest wait in muxd."""
    o = h2_origin(text_handler(0.4), max_concurrent_streams=2)
    m = muxd(conf(pki, pool={"max_h2_per_origin": "3"}), args=["-v"])
    results = concurrently(8, lambda i, b: fetch(m, o.url(f"/s{i}"), barrier=b))
    # (id, requests answered, max open at once, max open after muxd ACKed our
    # SETTINGS, streams refused with REFUSED_STREAM)
    per_conn = [(c.id, len(c.requests), c.max_open, c.max_open_acked, len(c.refused)) for c in o.conns]
    print(f"origin connections: {per_conn}")
    assert_all_ok(results, what=f"origin connections {per_conn}, origin errors {o.errors}")
    assert sum(n for _, n, _, _, _ in per_conn) == 8, per_conn
    assert all(mx <= 2 for _, _, mx, _, _ in per_conn), f"more than 2 streams at once on a connection: {per_conn}"
    assert o.connections == 3, f"expected muxd to open max_h2_per_origin = 3 connections: {per_conn}"
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 3
    assert metrics.value("muxd_requests_total", proto="h2") == 8
    no_origin_errors(o)


def test_rst_stream_reaches_only_its_client(muxd, h2_origin, pki):
    def all_open(req):
        """Until all six streams are open on the connection, so that the
        resets happen while the others run."""
        wait_until(lambda: len(req.conn.requests) >= 6, timeout=10, what="six streams on one connection")

    def handler(req):
        all_open(req)
        if req.path == "/reset-early":
            req.reset(ErrorCodes.INTERNAL_ERROR)
            resets.append(req.path)
        elif req.path == "/reset-late":
            req.send_head(200, [("content-length", "100000")])
            req.send_data(b"x" * 1000)
            wait_until(lambda: "/reset-early" in resets, timeout=10, what="the early reset")
            req.reset(ErrorCodes.INTERNAL_ERROR)
            resets.append(req.path)
        else:
            wait_until(lambda: len(resets) == 2, timeout=10, what="both resets")
            req.respond(200, [], f"{req.path} conn={req.conn.id}")

    resets = []

    o = h2_origin(handler)
    m = muxd(conf(pki), args=["-v"])
    paths = ["/ok0", "/reset-early", "/ok1", "/reset-late", "/ok2", "/ok3"]
    results = concurrently(len(paths), lambda i, b: fetch(m, o.url(paths[i]), barrier=b))
    by_path = dict(zip(paths, results))
    early = by_path.pop("/reset-early")
    late = by_path.pop("/reset-late")
    assert not isinstance(early, Exception) and early.status == 502, f"reset before the head: {early!r}"
    assert isinstance(late, IncompleteResponse), f"reset after the head did not cut the client off: {late!r}"
    for path, r in by_path.items():
        assert not isinstance(r, Exception) and r.status == 200, f"{path}: {r!r}"
        assert r.body == f"{path} conn=0".encode()
    seen = [r.path for r in o.requests]
    assert seen.count("/reset-early") == 1, f"muxd retried the stream the origin reset (INTERNAL_ERROR): {seen}"
    assert sorted(seen) == sorted(paths), seen
    assert o.connections == 1, f"the origin saw {o.connections} connections"
    assert opened(m) == 1
    no_origin_errors(o)


def test_unanswered_ping_replaces_connection(muxd, h2_origin, pki):
    """Connection 0 goes dead at muxd's first PING (no ACK, nothing read or
    sent any more).  A request on it after >= 2 s idle is retried on a new
    connection once the PING goes unanswered for 3 s."""
    o = h2_origin(text_handler(), ping=lambda conn_id: "blackhole" if conn_id == 0 else "ack")
    m = muxd(conf(pki), args=["-v"])
    r = fetch(m, o.url("/one"))
    assert r.status == 200 and r.body == b"/one conn=0", r
    assert not o.conn(0).pings, "muxd PINGed a connection that was not idle"

    # muxd PINGs before a stream on a connection idle for 2 s: wait until its
    # own /status.json has the connection idle that long (2.3: the pool's and
    # the codec's idle stamps are taken a moment apart)
    wait_until(lambda: [c for c in m.status()["connections"] if c["idle_s"] >= 2.3], timeout=30,
               what="the connection to be idle for 2 s")
    start = time.monotonic()
    r = fetch(m, o.url("/two"), timeout=20)
    elapsed = time.monotonic() - start
    print(f"request after the unanswered PING took {elapsed:.2f} s")
    assert r.status == 200, r
    assert r.body == b"/two conn=1", r
    assert o.conn(0).pings, "muxd did not PING the connection idle for 2.5 s"
    assert 2.5 <= elapsed <= 8, f"the retry came after {elapsed:.2f} s (PING timeout is 3 s)"
    assert o.connections == 2
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 2
    assert metrics.value("muxd_upstream_retries_total") >= 1

    # the fresh connection is used at once (not idle for 2 s: no PING wait)
    start = time.monotonic()
    r = fetch(m, o.url("/three"))
    assert r.status == 200 and r.body == b"/three conn=1", r
    assert time.monotonic() - start < 1.0
    no_origin_errors(o)


def test_large_response_to_slow_client_bounded(muxd, h2_origin, pki):
    size = 20 * MB
    rate = 5e6  # bytes per second the client reads
    expected = hashlib.sha256()
    for chunk in pattern_chunks(size, seed=25):
        expected.update(chunk)

    def handler(req):
        req.send_head(200, [("content-length", str(size))])
        for chunk in pattern_chunks(size, seed=25):
            req.send_data(chunk)
        req.send_data(b"", end_stream=True)

    o = h2_origin(handler)
    m = muxd(conf(pki))
    got = hashlib.sha256()
    received = 0
    with connect(m.port, timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)  # muxd, not the kernel, must hold back
        s.sendall(proxy_request("GET", o.url("/20m")))
        reader = HTTPReader(s)
        _, status, _, headers = reader.read_head()
        assert status == 200
        start = time.monotonic()
        for piece in reader.iter_body(headers):
            got.update(piece)
            received += len(piece)
            ahead = received / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # the client's reading rate is the behaviour under test
    assert received == size
    assert got.hexdigest() == expected.hexdigest(), "body differs"
    peak = vm_hwm_kib(m.pid)
    print(f"muxd peak RSS: {peak} KiB")
    if not SANITIZE:
        assert peak < RSS_LIMIT_KIB, f"muxd peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    no_origin_errors(o)


def test_trailers_relayed_to_http11_client(muxd, h2_origin, pki):
    body = pattern_bytes(100000, seed=26)

    def handler(req):
        req.send_head(200, [("content-type", "application/octet-stream")])  # no length
        req.send_data(body[:50000])
        req.send_data(body[50000:])
        req.send_trailers([("x-checksum", sha256(body)), ("x-count", "2")])

    o = h2_origin(handler)
    m = muxd(conf(pki))
    r = fetch(m, o.url("/t"), headers=[("TE", "trailers")])
    assert r.status == 200, r
    assert r.headers.tokens("transfer-encoding") == ["chunked"], r.headers
    assert r.body == body
    assert r.trailers.get("x-checksum") == sha256(body), r.trailers
    assert r.trailers.get("x-count") == "2", r.trailers
    no_origin_errors(o)


def test_interim_response_relayed(muxd, h2_origin, pki):
    def handler(req):
        req.send_head(103, [("link", "</style.css>; rel=preload")])
        time.sleep(0.05)  # the origin's pace: the hint goes out on its own, ahead of the answer
        req.respond(200, [], b"final")

    o = h2_origin(handler)
    m = muxd(conf(pki))
    r = fetch(m, o.url("/early-hints"))
    assert r.status == 200 and r.body == b"final", r
    assert [i.status for i in r.interim] == [103], r.interim
    assert r.interim[0].headers.get("link") == "</style.css>; rel=preload"
    no_origin_errors(o)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_post_body_over_h2_intact(muxd, h2_origin, pki, framing):
    body = pattern_bytes(3 * MB + 123, seed=27)

    def handler(req):
        req.respond(200, [("content-type", "application/json")], json.dumps({
            "method": req.method, "length": len(req.body), "sha256": sha256(req.body),
            "content-length": req.header("content-length"),
        }))

    o = h2_origin(handler)
    m = muxd(conf(pki))
    if framing == "content-length":
        r = fetch(m, o.url("/up"), "POST", body=body, timeout=30)
    else:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                          for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
        r = fetch(m, o.url("/up"), "POST", headers=[("Transfer-Encoding", "chunked")], body=chunks, timeout=30)
    assert r.status == 200, r
    seen = r.json()
    assert seen["method"] == "POST"
    assert seen["length"] == len(body)
    assert seen["sha256"] == sha256(body)
    if framing == "content-length":
        assert seen["content-length"] in (None, str(len(body)))
    assert opened(m) == 1
    no_origin_errors(o)


def test_alpn_http11_origin_spreads_waiters(muxd, h2_origin, pki):
    """ALPN was offered h2 but the origin picks http/1.1: the 20 requests
    that waited for the first connection spread over HTTP/1.1 connections
    (at most max_h1_per_origin) and all succeed."""

    def handler(req):
        time.sleep(0.3)  # the origin's pace: the 20 requests overlap, so muxd must spread them
        req.respond(200, [], f"{req.path} {req.protocol}")

    o = h2_origin(handler, alpn=("http/1.1",))
    m = muxd(conf(pki, pool={"max_h1_per_origin": "4"}))
    results = concurrently(20, lambda i, b: fetch(m, o.url(f"/h{i}"), barrier=b))
    assert_all_ok(results, lambda i: f"/h{i} http/1.1".encode())
    assert all(c.alpn == "http/1.1" for c in o.conns), [c.alpn for c in o.conns]
    assert 1 < o.connections <= 4, f"the origin saw {o.connections} connections"
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h2") == 0
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h1") == o.connections
    assert metrics.value("muxd_requests_total", proto="h1") == 20
    no_origin_errors(o)
