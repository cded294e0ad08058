"""CONNECT tunnels: connect_ports, the 200 only once the upstream TCP
connection is up, splicing with backpressure, half-close and reset in each
direction, the idle timeout, early data, IPv6 literals and the tunnel metric."""

import hashlib
import socket
import struct
import threading
import time

import pytest

from support import (
    LOCALHOST,
    SANITIZE,
    HTTPReader,
    closed_port,
    connect,
    curl,
    echo_stream,
    open_tunnel,
    pattern_bytes,
    pattern_chunks,
    proxy_request,
    recv_all,
    tcp_connections_to,
    vm_hwm_kib,
    wait_until,
)

BIG = 100 * 1024 * 1024
RSS_LIMIT_KIB = 48 * 1024


def tunnel_conf(*ports, **muxd_keys):
    conf = {"muxd": {"connect_ports": " ".join(["443"] + [str(p) for p in ports])}}
    conf["muxd"].update(muxd_keys)
    return conf


def tunnels(m):
    return m.metrics().value("muxd_requests_total", proto="tunnel")


def established(m, authority, early=b"", timeout=10.0):
    """Open a tunnel that must succeed; returns (sock, leftover bytes)."""
    resp, reader = open_tunnel(m.port, authority, early=early, timeout=timeout)
    if resp.status != 200:
        reader.sock.close()
        raise AssertionError(f"CONNECT {authority}: {resp}")
    leftover = bytes(reader.buf)
    reader.buf.clear()
    return reader.sock, leftover


def recv_exact(sock, n, have=b""):
    out = bytearray(have)
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def test_curl_https_through_tunnel(muxd, nginx_tls, pki):
    body = pattern_bytes(1024, seed=12)
    (nginx_tls.root / "1k").write_bytes(body)
    m = muxd(tunnel_conf(nginx_tls.port))
    assert tunnels(m) == 0
    r = curl(m.port, nginx_tls.url("/1k"), "--cacert", str(pki.ca_cert))
    assert r.returncode == 0, r.stderr
    assert r.stdout == body
    assert tunnels(m) == 1
    # the TLS was curl's own: muxd opened no pooled TLS connection for it
    r = curl(m.port, nginx_tls.url("/1k"), "--cacert", str(pki.ca_cert))
    assert r.returncode == 0, r.stderr
    assert tunnels(m) == 2


def test_connect_outside_connect_ports_is_403(muxd, stream_server):
    srv = stream_server(echo_stream)
    m = muxd()  # connect_ports = 443 only
    before = tcp_connections_to(srv.port)
    resp, reader = open_tunnel(m.port, srv.authority)
    reader.sock.close()
    assert resp.status == 403, resp
    # a connect() before the refusal would be in the kernel's table by now,
    # accepted by the server's thread or not
    assert tcp_connections_to(srv.port) <= before, "muxd connected to the target before refusing"
    assert srv.connections == 0, "muxd connected to the target before refusing"
    # listing the port lets the same CONNECT through
    m2 = muxd(tunnel_conf(srv.port))
    sock, _ = established(m2, srv.authority)
    with sock:
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
    assert srv.connections == 1


def test_connect_refused_port_is_502(muxd):
    port = closed_port()
    m = muxd(tunnel_conf(port))
    resp, reader = open_tunnel(m.port, f"{LOCALHOST}:{port}")
    reader.sock.close()
    assert resp.status == 502, resp
    text = resp.text.strip()
    assert "\n" not in text, f"the body is not one line: {text!r}"
    assert f"{LOCALHOST}:{port}" in text or (LOCALHOST in text and str(port) in text), text
    assert "refused" in text.lower(), f"the body does not give the reason: {text!r}"


def test_connect_ipv6_literal(muxd, stream_server):
    try:
        srv = stream_server(echo_stream, host="::1")
    except OSError as e:
        pytest.skip(f"::1 is not usable: {e}")
    m = muxd(tunnel_conf(srv.port))
    sock, _ = established(m, f"[::1]:{srv.port}")
    with sock:
        sock.sendall(b"over ipv6")
        assert recv_exact(sock, 9) == b"over ipv6"
    assert srv.connections == 1


def test_early_data_after_connect_head_is_forwarded(muxd, stream_server):
    srv = stream_server(echo_stream)
    m = muxd(tunnel_conf(srv.port))
    early = b"sent with the CONNECT head\n" * 10
    sock, leftover = established(m, srv.authority, early=early)
    with sock:
        assert recv_exact(sock, len(early), leftover) == early
        sock.sendall(b"and after")
        assert recv_exact(sock, 9) == b"and after"
    assert tunnels(m) == 1


def test_tunnel_100mb_both_ways_bounded_rss(muxd, stream_server):
    srv = stream_server(echo_stream)
    m = muxd(tunnel_conf(srv.port))
    sock, leftover = established(m, srv.authority, timeout=30)
    assert leftover == b""
    sent = hashlib.sha256()
    send_error = []

    def sender():
        try:
            for chunk in pattern_chunks(BIG, seed=5):
                sock.sendall(chunk)
                sent.update(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_error.append(e)

    t = threading.Thread(target=sender, daemon=True)
    start = time.monotonic()
    t.start()
    got = hashlib.sha256()
    received = 0
    with sock:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            got.update(data)
            received += len(data)
        t.join(30)
    elapsed = time.monotonic() - start
    print(f"100 MB echoed through the tunnel in {elapsed:.1f}s")
    assert not send_error, send_error
    assert received == BIG
    assert got.hexdigest() == sent.hexdigest()
    assert not srv.errors, srv.errors

    peak = vm_hwm_kib(m.pid)
    print(f"muxd peak RSS: {peak} KiB")
    if not SANITIZE:  # ASan's shadow memory and quarantine make RSS meaningless
        assert peak < RSS_LIMIT_KIB, f"muxd peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"


def test_client_half_close_reaches_server(muxd, stream_server):
    """The client shuts its write side; the server reads to EOF, then answers
    and closes; the client receives the whole answer, then EOF."""
    request = pattern_bytes(300000, seed=8)
    reply = pattern_bytes(200000, seed=9)
    seen = []

    def handler(sock):
        data = recv_all(sock)
        seen.append(data)
        sock.sendall(reply)

    srv = stream_server(handler)
    m = muxd(tunnel_conf(srv.port))
    sock, leftover = established(m, srv.authority)
    with sock:
        sock.settimeout(10)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        got = leftover + recv_all(sock)
    assert got == reply
    assert seen == [request]


def test_server_half_close_reaches_client(muxd, stream_server):
    """The server shuts its write side first; the client sees EOF but can go
    on sending, and the server receives it all."""
    greeting = b"hello, then EOF from my side\n"
    upload = pattern_bytes(300000, seed=10)
    seen = []
    done = threading.Event()

    def handler(sock):
        sock.sendall(greeting)
        sock.shutdown(socket.SHUT_WR)
        seen.append(recv_all(sock))
        done.set()

    srv = stream_server(handler)
    m = muxd(tunnel_conf(srv.port))
    sock, leftover = established(m, srv.authority)
    with sock:
        sock.settimeout(10)
        got = bytearray(leftover)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        assert bytes(got) == greeting
        sock.sendall(upload)  # the tunnel is still open this way
        sock.shutdown(socket.SHUT_WR)
        assert done.wait(10), "the server never saw the client's EOF"
        # both sides are done: muxd closes the tunnel
        assert sock.recv(1) == b""
    assert seen == [upload]


def linger_reset(sock):
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_within(sock, timeout):
    """True when the peer closes or resets sock within timeout."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return False
    return True


def test_server_reset_closes_client_side(muxd, stream_server):
    ready = threading.Event()

    def handler(sock):
        assert recv_exact(sock, 5) == b"hello"
        sock.sendall(b"bye")
        ready.wait(10)
        linger_reset(sock.dup())

    srv = stream_server(handler)
    m = muxd(tunnel_conf(srv.port))
    sock, leftover = established(m, srv.authority)
    with sock:
        sock.sendall(b"hello")
        assert recv_exact(sock, 3, leftover) == b"bye"
        ready.set()
        assert closed_within(sock, 5), "the client side stayed open after the server reset"


def test_client_reset_closes_server_side(muxd, stream_server):
    result = []
    done = threading.Event()

    def handler(sock):
        sock.settimeout(10)
        try:
            result.append(recv_exact(sock, 5))
            result.append(closed_within(sock, 5))
        finally:
            done.set()

    srv = stream_server(handler)
    m = muxd(tunnel_conf(srv.port))
    sock, _ = established(m, srv.authority)
    sock.sendall(b"hello")
    wait_until(lambda: result, timeout=10, what="the server to receive the bytes before the reset")
    linger_reset(sock)
    assert done.wait(10)
    assert result == [b"hello", True], "the server side stayed open after the client reset"


def test_idle_tunnel_closed_after_timeout(muxd, stream_server):
    srv = stream_server(echo_stream)
    m = muxd(tunnel_conf(srv.port, tunnel_idle_timeout="1s"))
    sock, _ = established(m, srv.authority)
    with sock:
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
        start = time.monotonic()
        assert closed_within(sock, 5), "the idle tunnel was not closed within 5 s"
        elapsed = time.monotonic() - start
    assert elapsed >= 0.5, f"the tunnel was closed after {elapsed:.2f}s, before the idle timeout"


def test_active_tunnel_outlives_idle_timeout(muxd, stream_server):
    """Traffic resets the idle timer: a tunnel that talks every 300 ms for
    2.5 s stays open with tunnel_idle_timeout = 1s."""
    srv = stream_server(echo_stream)
    m = muxd(tunnel_conf(srv.port, tunnel_idle_timeout="1s"))
    sock, _ = established(m, srv.authority)
    with sock:
        sock.settimeout(5)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            sock.sendall(b"tick")
            assert recv_exact(sock, 4) == b"tick"
            time.sleep(0.3)  # the client's pace: quieter than the idle timeout, never silent for it


# --------------------------------------------------------------------------
# tunnels are upstream connections of the pool: max_connections and metrics


def pool_metric(m, name, **labels):
    return m.metrics().value(name, **labels)


def tunnel_get(m, url, timeout=10):
    """One absolute-form GET on its own client connection."""
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def test_tunnel_counts_as_upstream_connection(muxd, stream_server):
    """An established tunnel counts in
    muxd_upstream_connections_opened_total{proto="tunnel"} and as an active
    tunnel connection while open; a refused one is not counted."""
    srv = stream_server(echo_stream)
    port = closed_port()
    m = muxd(tunnel_conf(srv.port, port))
    assert pool_metric(m, "muxd_upstream_connections_opened_total", proto="tunnel") == 0
    for n in (1, 2):
        sock, _ = established(m, srv.authority)
        with sock:
            sock.sendall(b"ping")
            assert recv_exact(sock, 4) == b"ping"
            assert pool_metric(m, "muxd_upstream_connections_opened_total", proto="tunnel") == n
            assert pool_metric(m, "muxd_upstream_connections", proto="tunnel", state="active") == 1
        wait_until(
            lambda: pool_metric(m, "muxd_upstream_connections", proto="tunnel", state="active") == 0,
            timeout=5,
            what="the closed tunnel to leave the pool",
        )
    resp, reader = open_tunnel(m.port, f"{LOCALHOST}:{port}")
    reader.sock.close()
    assert resp.status == 502, resp
    assert pool_metric(m, "muxd_upstream_connections_opened_total", proto="tunnel") == 2
    assert pool_metric(m, "muxd_upstream_connections_opened_total", proto="h1") == 0


def test_tunnel_waits_on_max_connections_then_503(muxd, stream_server, origin):
    """max_connections = 1 held by a tunnel: another tunnel and a request
    each wait connect_timeout (1 s), then get 503; once the tunnel is closed
    a new one gets the slot."""
    srv = stream_server(echo_stream)
    o = origin()
    m = muxd(dict(tunnel_conf(srv.port), pool={"max_connections": 1, "connect_timeout": "1s"}))
    sock, _ = established(m, srv.authority)
    with sock:
        t0 = time.monotonic()
        resp, reader = open_tunnel(m.port, srv.authority)
        elapsed = time.monotonic() - t0
        reader.sock.close()
        assert resp.status == 503, resp
        assert "upstream connection limit reached" in resp.text, resp
        assert 0.8 <= elapsed <= 3.0, f"503 after {elapsed:.2f}s, connect_timeout is 1s"
        assert srv.connections == 1
        resp = tunnel_get(m, o.url("/blocked"))
        assert resp.status == 503, resp
        assert o.connections == 0
        sock.sendall(b"still here")
        assert recv_exact(sock, 10) == b"still here", "the open tunnel was disturbed"
    wait_until(
        lambda: pool_metric(m, "muxd_upstream_connections", proto="tunnel", state="active") == 0,
        timeout=5,
        what="the closed tunnel to give its slot back",
    )
    sock, _ = established(m, srv.authority)
    with sock:
        sock.sendall(b"again")
        assert recv_exact(sock, 5) == b"again"


def test_tunnel_waiting_on_max_connections_gets_freed_slot(muxd, stream_server):
    """A tunnel blocked on max_connections gets the slot as soon as the
    tunnel holding it closes, within connect_timeout."""
    srv = stream_server(echo_stream)
    m = muxd(
        dict(tunnel_conf(srv.port), pool={"max_connections": 1, "connect_timeout": "10s"}),
        args=["-v"],
    )
    first, _ = established(m, srv.authority)
    out = []
    waiter = threading.Thread(target=lambda: out.append(established(m, srv.authority)))
    waiter.start()
    try:
        wait_until(
            lambda: "waits for a connection slot (max_connections)" in m.log(),
            timeout=5,
            what="the second tunnel to wait for a slot",
        )
        assert srv.connections == 1
        first.close()
        waiter.join(8)
        assert out, "the waiting tunnel got no slot"
        sock, _ = out[0]
        with sock:
            sock.sendall(b"second")
            assert recv_exact(sock, 6) == b"second"
    finally:
        first.close()
        waiter.join(10)
    assert pool_metric(m, "muxd_upstream_connections_opened_total", proto="tunnel") == 2


def test_tunnel_evicts_idle_connection_under_max_connections(muxd, stream_server, origin):
    """max_connections = 1 taken by an idle pooled connection: a tunnel
    evicts it (reason limit) instead of waiting."""
    srv = stream_server(echo_stream)
    o = origin()
    m = muxd(dict(tunnel_conf(srv.port), pool={"max_connections": 1, "connect_timeout": "5s"}))
    resp = tunnel_get(m, o.url("/warm"))
    assert resp.status == 200, resp
    wait_until(
        lambda: pool_metric(m, "muxd_upstream_connections", proto="h1", state="idle") == 1,
        timeout=5,
        what="the origin connection to be idle",
    )
    t0 = time.monotonic()
    sock, _ = established(m, srv.authority)
    with sock:
        assert time.monotonic() - t0 < 2.5, "the tunnel waited instead of evicting"
        sock.sendall(b"ok")
        assert recv_exact(sock, 2) == b"ok"
        wait_until(lambda: o.active == 0, timeout=5, what="the idle connection to be closed")
        assert pool_metric(m, "muxd_pool_evictions_total", reason="limit") == 1
