"""Deadlines of connection set-up, per-origin capacity, and a parent's 407.

One deadline, ``[pool] connect_timeout``, covers the whole set-up chain of
a connection (DNS/TCP, SOCKS5, CONNECT via a parent, the TLS handshakes, an
HTTP/2 peer's SETTINGS), for pooled connections and client tunnels alike:
when it passes the client gets 504 naming the host and the step, and the
slot that the attempt held is free again.  Requests waiting for a free
connection under ``max_h1_per_origin`` / ``max_h2_per_origin`` wait at most
``connect_timeout``, then get 503.  A parent's 407 is muxd's configuration
failing, not the client's business: 502 naming the parent and "proxy
authentication required".

The peers are the tests' own: mute servers that accept TCP and then say
nothing (no TLS, no CONNECT answer, no SOCKS5 reply, no SETTINGS), a
scripted HTTP/2 parent whose CONNECT stream never gets an answer, origins
that hold their answer until told, and a parent that always answers 407.
"""

import socket
import ssl
import threading
import time

import pytest

from support import (
    LOCALHOST,
    HTTPReader,
    closed_port,
    connect,
    open_tunnel,
    proxy_request,
    wait_until,
)

# short, so that a test waits a second per deadline
TIMEOUT = "1s"
# what "answered within the deadline" means here (generous: sanitizers, a busy machine)
ANSWER_WITHIN = 8.0


def mute(sock):
    """StreamServer handler: accept, read and discard until the peer goes."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def conf(route=None, pool=None, muxd=None):
    out = {"pool": {"connect_timeout": TIMEOUT, **(pool or {})}}
    if route:
        out["route *"] = route
    if muxd:
        out["muxd"] = muxd
    return out


def request(m, url, timeout=ANSWER_WITHIN + 5):
    """An absolute-form GET straight to muxd; returns (Response, seconds)."""
    t0 = time.monotonic()
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url, headers=[("Connection", "close")]))
        resp = HTTPReader(s).read_response()
    return resp, time.monotonic() - t0


def tunnel(m, authority, timeout=ANSWER_WITHIN + 5):
    t0 = time.monotonic()
    resp, reader = open_tunnel(m.port, authority, timeout=timeout)
    reader.sock.close()
    return resp, time.monotonic() - t0


def one_line(text):
    text = text.strip()
    assert "\n" not in text, f"the body is not one line: {text!r}"
    return text


def expect_504(resp, elapsed, *needles):
    assert resp.status == 504, resp
    assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f}s"
    text = one_line(resp.text)
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    assert "timed out after 1 s" in text, text
    return text


def status_conns(m):
    return m.admin("/status.json").json()["connections"]


def no_connections_to(m, port):
    return not [c for c in status_conns(m) if c["port"] == port]


# --------------------------------------------------------------------------
# the set-up chain of pooled connections


def test_mute_https_origin_tls_handshake_is_504_naming_it(muxd, stream_server):
    """An https origin that accepts TCP and never speaks TLS: 504 naming the
    host and "TLS handshake"; a second request is answered too (the attempt
    no longer holds the origin's capacity), and so are two at once."""
    srv = stream_server(mute)
    m = muxd(conf())
    url = f"https://{srv.authority}/"
    for _ in range(2):
        resp, elapsed = request(m, url)
        expect_504(resp, elapsed, f"TLS handshake with {srv.authority}")
    results = []
    threads = [threading.Thread(target=lambda: results.append(request(m, url))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ANSWER_WITHIN + 10)
    assert len(results) == 2, "a concurrent request was not answered"
    for resp, elapsed in results:
        expect_504(resp, elapsed, f"TLS handshake with {srv.authority}")
    # the failed set-ups left nothing behind in the pool
    wait_until(lambda: no_connections_to(m, srv.port), timeout=5, what="the pool to forget the attempts")


def h2_mute_after_tls(pki):
    """A StreamServer handler: completes TLS (ALPN h2) and then sends
    nothing, not even SETTINGS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
    ctx.set_alpn_protocols(["h2"])

    def handler(sock):
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            while tls.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass

    return handler


def test_h2_origin_without_settings_is_504(muxd, stream_server, pki):
    """TLS completes with ALPN h2, then the peer never sends SETTINGS: the
    connection is not usable, and connect_timeout ends the wait."""
    srv = stream_server(h2_mute_after_tls(pki))
    m = muxd(conf(route={"ca_file": pki.ca_cert}))
    for _ in range(2):
        resp, elapsed = request(m, f"https://{srv.authority}/")
        expect_504(resp, elapsed, f"HTTP/2 SETTINGS from {srv.authority}")
    wait_until(lambda: no_connections_to(m, srv.port), timeout=5, what="the pool to forget the attempts")


@pytest.mark.parametrize("kind", ["http", "socks5", "socks5h", "https"])
def test_mute_parent_is_504_naming_the_step(muxd, stream_server, pki, kind):
    """A parent that accepts TCP and never answers (no CONNECT answer, no
    SOCKS5 reply, no TLS): 504 naming the parent and the step, twice."""
    srv = stream_server(mute)
    m = muxd(conf(route={"proxy": f"{kind}://{srv.authority}", "proxy_ca_file": pki.ca_cert}))
    # an http parent takes http:// requests itself: CONNECT is for https://
    scheme = "https" if kind == "http" else "http"
    target = f"{LOCALHOST}:{closed_port()}"
    step = {
        "http": f"CONNECT via proxy {srv.authority}",
        "socks5": f"SOCKS5 via proxy {srv.authority}",
        "socks5h": f"SOCKS5 via proxy {srv.authority}",
        "https": srv.authority,  # TLS to it, or the CONNECT stream waiting for it
    }[kind]
    for _ in range(2):
        resp, elapsed = request(m, f"{scheme}://{target}/")
        text = expect_504(resp, elapsed, step, target)
        if kind == "https":
            assert "TLS handshake with" in text or "CONNECT via proxy" in text, text


@pytest.mark.parametrize("kind", ["http", "socks5", "https"])
def test_client_tunnel_through_mute_parent_is_504(muxd, stream_server, pki, kind):
    srv = stream_server(mute)
    port = closed_port()
    target = f"{LOCALHOST}:{port}"
    m = muxd(conf(route={"proxy": f"{kind}://{srv.authority}", "proxy_ca_file": pki.ca_cert},
                  muxd={"connect_ports": f"443 {port}"}))
    step = {"http": "CONNECT via proxy", "socks5": "SOCKS5 via proxy", "https": ""}[kind]
    for _ in range(2):
        resp, elapsed = tunnel(m, target)
        expect_504(resp, elapsed, srv.authority, target, step)


class H2Parent:
    """A scripted https:// parent speaking HTTP/2 (python3-h2, TLS with the
    test PKI): it records every CONNECT stream and answers none of them
    unless told (``answer(stream_id, status)``).  h2origin's origin cannot
    play it: h2 there insists on :path, which a CONNECT request lacks."""

    def __init__(self, stream_server, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
        self.ctx.set_alpn_protocols(["h2"])
        self.lock = threading.Lock()
        self.connects = []  # (conn, stream id, authority)
        self.errors = []
        self.srv = stream_server(self._serve)

    @property
    def authority(self):
        return self.srv.authority

    @property
    def connections(self):
        return self.srv.connections

    def _serve(self, sock):
        import h2.config
        import h2.connection
        import h2.events

        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
        conn.initiate_connection()
        conn.send_lock = threading.Lock()
        conn.sock = tls
        with conn.send_lock:
            tls.sendall(conn.data_to_send())
        while True:
            try:
                data = tls.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            with conn.send_lock:
                try:
                    events = conn.receive_data(data)
                except Exception as e:  # noqa: BLE001 - recorded for the test
                    self.errors.append(repr(e))
                    return
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        h = dict(ev.headers)
                        if h.get(":method") == "CONNECT":
                            with self.lock:
                                self.connects.append((conn, ev.stream_id, h.get(":authority")))
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                tls.sendall(conn.data_to_send())

    def answer(self, index, status):
        with self.lock:
            conn, stream_id, _ = self.connects[index]
        with conn.send_lock:
            conn.send_headers(stream_id, [(":status", str(status)), ("proxy-authenticate", 'Basic realm="x"')],
                              end_stream=True)
            conn.sock.sendall(conn.data_to_send())

    def connect_count(self):
        with self.lock:
            return len(self.connects)


def test_h2_parent_connect_stream_never_answered_is_504(muxd, stream_server, pki):
    """An https parent speaking HTTP/2 whose CONNECT streams never get an
    answer: requests and client tunnels get 504 naming the parent; the
    parent's pooled connection stays usable for the next one."""
    parent = H2Parent(stream_server, pki)
    port = closed_port()
    target = f"{LOCALHOST}:{port}"
    m = muxd(conf(route={"proxy": f"https://{parent.authority}", "proxy_ca_file": pki.ca_cert},
                  muxd={"connect_ports": f"443 {port}"}))
    for _ in range(2):
        resp, elapsed = request(m, f"https://{target}/")
        assert resp.status == 504, (resp, parent.errors)
        expect_504(resp, elapsed, f"CONNECT via proxy {parent.authority}", target)
    resp, elapsed = tunnel(m, target)
    expect_504(resp, elapsed, f"CONNECT via proxy {parent.authority}", target)
    assert parent.connect_count() == 3, parent.errors
    assert parent.connections == 1, "the CONNECT streams shared one connection"


# --------------------------------------------------------------------------
# waiting for capacity under the per-origin caps


def test_waiter_on_max_h1_per_origin_gets_503(muxd, origin):
    release = threading.Event()

    def held(req, conn):
        if req.path == "/hold":
            release.wait(30)
        conn.respond(200, body=b"done")

    o = origin(held)
    m = muxd(conf(pool={"max_h1_per_origin": "1"}))
    first = []
    t = threading.Thread(target=lambda: first.append(request(m, o.url("/hold"), timeout=40)))
    t.start()
    try:
        wait_until(lambda: o.requests, timeout=10, what="the first request at the origin")
        resp, elapsed = request(m, o.url("/second"))
        assert resp.status == 503, resp
        assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f}s"
        text = one_line(resp.text)
        assert o.authority in text and "max_h1_per_origin" in text, text
    finally:
        release.set()
        t.join(30)
    assert first and first[0][0].status == 200 and first[0][0].body == b"done", first
    assert [r.path for r in o.requests] == ["/hold"]
    # the cap frees up: the next request goes through on the same connection
    resp, _ = request(m, o.url("/third"))
    assert resp.status == 200, resp


def test_waiter_on_max_h2_per_origin_gets_503(muxd, h2_origin, pki):
    release = threading.Event()

    def held(req):
        if req.path == "/hold":
            release.wait(30)
        req.respond(200, body=b"done")

    o = h2_origin(held, max_concurrent_streams=1)
    m = muxd(conf(route={"ca_file": pki.ca_cert}, pool={"max_h2_per_origin": "1"}))
    first = []
    t = threading.Thread(target=lambda: first.append(request(m, o.url("/hold"), timeout=40)))
    t.start()
    try:
        wait_until(lambda: o.requests, timeout=10, what="the first request at the origin")
        resp, elapsed = request(m, o.url("/second"))
        assert resp.status == 503, resp
        assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f}s"
        text = one_line(resp.text)
        assert o.authority in text and "max_h2_per_origin" in text, text
    finally:
        release.set()
        t.join(30)
    assert first and first[0][0].status == 200, first
    assert o.connections == 1


# --------------------------------------------------------------------------
# a parent's 407


def always_407(sock):
    """StreamServer handler: an HTTP parent answering every request head
    (absolute form or CONNECT) with 407, keeping the connection."""
    reader = HTTPReader(sock)
    body = b"proxy authentication required\n"
    while True:
        try:
            reader.read_until(b"\r\n\r\n")
        except Exception:  # noqa: BLE001 - EOF ends the connection
            return
        sock.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                     b'Proxy-Authenticate: Basic realm="fake"\r\n'
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("creds", ["", "carol:n0t-it@"])
def test_parent_407_on_forwarded_request_is_502(muxd, stream_server, creds):
    """An http:// request goes to the HTTP parent in absolute form; its 407
    becomes 502 naming the parent (not relayed: the client has no say in
    muxd's parent credentials)."""
    srv = stream_server(always_407)
    m = muxd(conf(route={"proxy": f"http://{creds}{srv.authority}"}))
    resp, _ = request(m, "http://example.invalid/x")
    assert resp.status == 502, resp
    assert "proxy-authenticate" not in resp.headers
    text = one_line(resp.text)
    assert f"proxy {srv.authority}" in text and "proxy authentication required" in text, text
    assert srv.connections == 1


def test_parent_407_on_client_tunnel_is_502(muxd, stream_server):
    srv = stream_server(always_407)
    port = closed_port()
    m = muxd(conf(route={"proxy": f"http://{srv.authority}"}, muxd={"connect_ports": f"443 {port}"}))
    resp, _ = tunnel(m, f"{LOCALHOST}:{port}")
    assert resp.status == 502, resp
    text = one_line(resp.text)
    assert f"proxy {srv.authority}" in text and "proxy authentication required" in text, text


def test_h2_parent_407_on_connect_stream_is_502(muxd, stream_server, pki):
    """An HTTP/2 parent answering a CONNECT stream with 407."""
    parent = H2Parent(stream_server, pki)
    port = closed_port()
    target = f"{LOCALHOST}:{port}"
    m = muxd(conf(route={"proxy": f"https://{parent.authority}", "proxy_ca_file": pki.ca_cert},
                  muxd={"connect_ports": f"443 {port}"}))
    out = []
    t = threading.Thread(target=lambda: out.append(tunnel(m, target)))
    t.start()
    wait_until(parent.connect_count, timeout=5, what="the CONNECT stream")
    parent.answer(0, 407)
    t.join(ANSWER_WITHIN + 10)
    assert out, "the tunnel was not answered"
    resp, _ = out[0]
    assert resp.status == 502, resp
    text = one_line(resp.text)
    assert f"proxy {parent.authority}" in text and "proxy authentication required" in text, text
