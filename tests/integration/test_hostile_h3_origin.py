"""Hostile HTTP/3 origins (issue 16 items 1 and 4, the h3 column of
test_hostile.py), scripted by tests/h3origin/h3origin.c: endless interim
heads, an oversized header block, a stream reset, an origin that reads
nothing.  Each asserts muxd is alive with its memory bounded, the attacked
client gets the documented status, and a bystander on the same QUIC
connection gets its answer (h3origin logs the connection of every
request).

Clients reach the origin through muxd's TLS interception (CONNECT
localhost:PORT, then HTTP/1.1 over TLS with muxd's CA); muxd knows the
origin only from a pre-loaded Alt-Svc cache (h3origin.h3_only_muxd), so
nothing can go over TCP by mistake.
"""

import socket
import ssl
import time

from h3origin import h3_only_muxd
from support import HTTPReader, connect
from test_hostile import MB, assert_rss, in_thread, result


def conf(**pool):
    c = {"connect_timeout": "5s", "response_timeout": "5s"}
    c.update(pool)
    return {"pool": c}


def tls_client(m, o, rcvbuf=None, timeout=20):
    """An intercepted TLS connection to https://localhost:PORT through muxd
    (HTTP/1.1 inside)."""
    s = connect(m.port, timeout=timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.sendall(b"CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % (o.port, o.port))
    head = HTTPReader(s).read_until(b"\r\n\r\n")  # nothing after it: muxd waits for the ClientHello
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(s, server_hostname="localhost")


def request(o, path, method="GET", headers=(), body=b""):
    head = [f"{method} {path} HTTP/1.1", f"Host: localhost:{o.port}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(m, o, path, method="GET", timeout=15):
    with tls_client(m, o, timeout=timeout) as s:
        s.sendall(request(o, path, method))
        return HTTPReader(s).read_response(method)


def bystander_ok(m, o, path="/bystander"):
    r = get(m, o, path)
    assert r.status == 200 and r.body == b"ok", r
    conns = {c for c, _, p in o.requests() if p == path}
    assert conns == {1} and o.connections() == 1, f"the bystander did not share the QUIC connection: {o.log()}"


class SseBystander:
    """A client with an /sse stream open on the origin's QUIC connection:
    it has read the first event; next_event() has the origin send one more
    and reads it."""

    def __init__(self, m, o):
        self.o = o
        self.s = tls_client(m, o)
        self.s.sendall(request(o, "/sse"))
        self.r = HTTPReader(self.s)
        head = self.r.read_until(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], head
        assert b"data: 1\n\n" in self.r.read_until(b"data: 1\n\n")

    def next_event(self, word):
        self.o.trigger(word)
        want = f"data: {word}\n\n".encode()
        assert want in self.r.read_until(want)

    def close(self):
        self.s.close()


def test_h3_interim_flood_to_a_client_that_does_not_read(muxd, h3_origin, pki):
    """500 103 heads of ~40 KiB each (20 MB) on one stream to a client that
    reads nothing: 502 after 16, that stream only; muxd's memory stays
    bounded and a bystander on the same connection is served."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf())
    by = SseBystander(m, o)
    s = tls_client(m, o, rcvbuf=65536)
    s.sendall(request(o, "/interim?n=500&kib=40"))
    o.wait_request("/interim?n=500&kib=40")
    by.next_event("during")
    assert_rss(m, "during the flood")
    s.settimeout(15)
    resp = HTTPReader(s).read_response()
    s.close()
    assert resp.status == 502 and b"interim" in resp.body, resp
    assert len(resp.interim) <= 16, len(resp.interim)
    by.next_event("after")
    by.close()
    bystander_ok(m, o)
    assert_rss(m, "after the flood")


def test_h3_header_block_too_large_is_a_stream_error(muxd, h3_origin, pki):
    """A 100 KiB response head: 502 at once (not response_timeout) for that
    stream; an SSE stream open on the same QUIC connection goes on."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="30s"))
    by = SseBystander(m, o)
    t0 = time.monotonic()
    r = get(m, o, "/bigheader?kib=100")
    assert r.status == 502 and b"too large" in r.body, r
    assert time.monotonic() - t0 < 10, "the 502 waited"
    by.next_event("after")
    by.close()
    bystander_ok(m, o)
    assert_rss(m)


def test_h3_stream_reset_reaches_only_its_stream(muxd, h3_origin, pki):
    """The origin resets a stream (H3_INTERNAL_ERROR) before answering:
    502 for that client, the SSE stream on the same connection goes on."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf())
    by = SseBystander(m, o)
    r = get(m, o, "/reset")
    assert r.status == 502 and b"reset" in r.body, r
    by.next_event("after")
    by.close()
    bystander_ok(m, o)
    assert_rss(m)


def push_tls_upload(s, size, seconds=10):
    """Send up to size body bytes on the TLS socket s until muxd stops
    taking them for a second; returns how many it took."""
    s.setblocking(False)
    chunk = b"u" * 16384
    pushed, stalled_since = 0, None
    deadline = time.monotonic() + seconds
    while pushed < size and time.monotonic() < deadline:
        try:
            pushed += s.send(chunk[: size - pushed])
            stalled_since = None
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
    s.setblocking(True)
    return pushed


def test_h3_origin_that_reads_nothing_bounds_uploads(muxd, h3_origin, pki):
    """The origin never consumes a request body (its stream's flow-control
    window stays closed): a 100 MiB upload stalls with muxd's memory
    bounded, the client gets 504 after response_timeout, and a bystander
    on the same connection is served meanwhile."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="3s"))
    bystander_ok(m, o, "/first")
    size = 100 * MB
    s = tls_client(m, o)
    s.sendall(request(o, "/noread", "POST", [("Content-Length", str(size))]))
    o.wait_request("/noread")
    pushed = push_tls_upload(s, size)
    assert_rss(m, f"after {pushed} bytes pushed")
    assert pushed < 32 * MB, f"muxd took {pushed} bytes of an upload nobody reads"
    bystander_ok(m, o)
    s.settimeout(15)
    resp = HTTPReader(s).read_response()
    s.close()
    assert resp.status == 504, resp
    assert_rss(m, "after the upload")


def test_h3_attacks_in_parallel_leave_bystanders_and_muxd_fine(muxd, h3_origin, pki):
    """All the attacks at once on one QUIC connection, an SSE stream open
    through them: muxd stays up and every later request is answered."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="3s"))
    by = SseBystander(m, o)
    runs = [in_thread(get, m, o, p) for p in ("/reset", "/bigheader?kib=100", "/interim?n=100", "/reset")]
    codes = [result(t, out).status for t, out in runs]
    assert codes == [502] * 4, codes
    by.next_event("after")
    by.close()
    for _ in range(3):
        bystander_ok(m, o)
    assert o.alive() and m.proc.poll() is None
