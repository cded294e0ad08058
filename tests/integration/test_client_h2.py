"""HTTP/2 to clients inside interception (issue 14 item 1): an intercepted
TLS session offers ALPN h2 and http/1.1; a client that picks h2 gets an
nghttp2 server session whose streams are exchanges on the shared pool.

Real clients: curl --http2 (and its --parallel mode), httpx with http2=True,
and python-h2 scripted clients for the protections (floods, rapid reset,
concurrent streams, header list size), RST_STREAM of one stream and a stream
whose window stays closed, and GOAWAY on drain.
"""

import re
import socket
import ssl
import threading
import time

import pytest

from support import LOCALHOST, curl, pattern_bytes, wait_until

ONE_K = pattern_bytes(1024, seed=41)


def intercept_conf(pki, port, **sections):
    c = {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}
    for section, kv in sections.items():
        c.setdefault(section, {}).update(kv)
    return c


def local_ca(m):
    return str(m.state_dir / "ca.pem")


def metric(m, name, **labels):
    """The value of one sample of /metrics (0 when absent)."""
    return int(m.metrics().value(name, **labels))


def test_curl_http2_gets_http2(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    out = curl(m.port, f"https://localhost:{nginx_tls.port}/1k", "--http2", "--cacert",
               local_ca(m), "-w", "\n%{http_version} %{http_code}")
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"2 200", tail
    assert body == ONE_K
    assert metric(m, "muxd_client_h2_sessions_total") == 1


def test_client_h2_off_keeps_http11(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port, muxd={"client_h2": "off"}))
    out = curl(m.port, f"https://localhost:{nginx_tls.port}/1k", "--http2", "--cacert",
               local_ca(m), "-w", "\n%{http_version} %{http_code}")
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"1.1 200", tail
    assert body == ONE_K


# --------------------------------------------------------------------------
# a scripted HTTP/2 client (python-h2) inside muxd's interception

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402

from support import open_tunnel, recv_within  # noqa: E402


class _Conn(h2.connection.H2Connection):
    """h2's client connection that goes on after a GOAWAY (h2 4.1 closes its
    state machine at once; a draining server's open streams still finish).
    The scan of raw frames records the GOAWAY."""

    def _receive_goaway_frame(self, frame):
        return [], []


class H2Client:
    """One intercepted TLS connection through muxd that speaks HTTP/2.
    events(): every h2 event so far; raw(): write frames h2 would refuse."""

    def __init__(self, m, authority, settings=None, preface=True):
        resp, reader = open_tunnel(m.port, authority)
        assert resp.status == 200, resp
        assert not reader.buf
        ctx = ssl.create_default_context(cafile=local_ca(m))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(reader.sock, server_hostname=authority.rsplit(":", 1)[0])
        assert self.sock.selected_alpn_protocol() == "h2"
        self.sock.settimeout(10)
        self.authority = authority
        self.conn = _Conn(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.got = []      # h2 events
        self.frames = []   # (type name, stream id, error code or None) of raw frames seen
        self.closed = False
        self.bodies = {}
        self.ended = set()
        self.reset = {}
        self.heads = {}
        self.trailers = {}
        self.goaway = None
        if preface:
            self.conn.initiate_connection()
            if settings:
                self.conn.update_settings(settings)
            self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), end_stream=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"),
                                     (":authority", self.authority), (":path", path),
                                     *headers], end_stream=end_stream)
        self.flush()
        return sid

    def _scan(self, data):
        """Note raw frame types (GOAWAY codes) from bytes as they arrive."""
        self._rawbuf = getattr(self, "_rawbuf", b"") + data
        while len(self._rawbuf) >= 9:
            length = int.from_bytes(self._rawbuf[:3], "big")
            if len(self._rawbuf) < 9 + length:
                break
            ftype = self._rawbuf[3]
            sid = int.from_bytes(self._rawbuf[5:9], "big") & 0x7FFFFFFF
            body = self._rawbuf[9:9 + length]
            code = None
            if ftype == 0x7 and length >= 8:
                code = int.from_bytes(body[4:8], "big")
                self.goaway = code
            elif ftype == 0x3 and length >= 4:
                code = int.from_bytes(body[:4], "big")
            self.frames.append((ftype, sid, code))
            self._rawbuf = self._rawbuf[9 + length:]

    def pump(self, timeout=0.2, ack=True, no_ack=()):
        """Read what arrives within timeout; True while the connection lives."""
        if self.closed:
            return False
        data = recv_within(self.sock, timeout)
        if data is None:
            self.closed = True
            return False
        if not data:
            return True
        if not hasattr(self, "_preface_skipped"):
            self._preface_skipped = True
        self._scan(data)
        try:
            events = self.conn.receive_data(data)
        except Exception:  # raw frames h2 does not follow: only the scan counts
            events = []
        for ev in events:
            self.got.append(ev)
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.ResponseReceived):
                self.heads[sid] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                self.bodies[sid] = self.bodies.get(sid, b"") + ev.data
                if ack and sid not in no_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[sid] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(sid)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset[sid] = ev.error_code
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def until(self, pred, timeout=10, what="condition", **kw):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if not self.pump(**kw) and not pred():
                raise AssertionError(f"connection closed while waiting for {what}")
        return True

    def raw(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def frame(ftype, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def wait_closed(c, timeout=10, **pump_kw):
    deadline = time.monotonic() + timeout
    while not c.closed and time.monotonic() < deadline:
        c.pump(**pump_kw)
    return c.closed


ENHANCE_YOUR_CALM = 0xB
REFUSED_STREAM = 0x7


@pytest.fixture
def h2_setup(muxd, h2_origin, pki):
    """(muxd, origin, authority) with interception of the origin's port."""
    def start(handler=None, **muxd_conf):
        kw = {} if handler is None else {"handler": handler}
        o = h2_origin(**kw)
        m = muxd(intercept_conf(pki, o.port, **muxd_conf))
        return m, o, f"localhost:{o.port}"
    return start


# --------------------------------------------------------------------------
# real clients


def test_curl_parallel_shares_one_client_connection(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    url = f"https://localhost:{nginx_tls.port}/1k"
    args = ["--http2", "--cacert", local_ca(m), "-Z", "--parallel-max", "20"]
    for _ in range(20):
        args += ["-o", "/dev/null", "-w", "%{http_version} %{http_code}\n", url]
    out = curl(m.port, args.pop(), *args, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().split()
    assert lines == ["2", "200"] * 20, lines
    assert metric(m, "muxd_client_h2_sessions_total") == 1
    assert metric(m, "muxd_requests_total", proto="h1") == 20


def test_httpx_http2(muxd, nginx_tls, pki):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    with httpx.Client(http2=True, proxies=f"http://{LOCALHOST}:{m.port}",
                      verify=local_ca(m), trust_env=False, timeout=20) as client:
        for _ in range(3):
            r = client.get(f"https://localhost:{nginx_tls.port}/1k")
            assert r.status_code == 200
            assert r.http_version == "HTTP/2"
            assert r.content == ONE_K
    assert metric(m, "muxd_client_h2_sessions_total") == 1


# --------------------------------------------------------------------------
# streams mapped onto exchanges


def echo_head_handler(req):
    lines = [f"{n}: {v}" for n, v in req.headers] + [f"authority={req.authority}",
                                                     f"path={req.path}", f"body={len(req.body)}"]
    req.respond(200, [("content-type", "text/plain")], "\n".join(lines) + "\n",
                trailers=[("x-trailer", "t1")] if req.header("te") == "trailers" else None)


def test_stream_request_head_and_body_reach_the_origin(h2_setup):
    m, o, authority = h2_setup(echo_head_handler)
    c = H2Client(m, authority)
    sid = c.request("/a?b=c", headers=[("cookie", "x=1"), ("cookie", "y=2"),
                                       ("x-custom", "v")])
    sid2 = c.request("/post", method="POST", headers=[("content-length", "5")],
                     end_stream=False)
    c.conn.send_data(sid2, b"hello", end_stream=True)
    c.flush()
    c.until(lambda: {sid, sid2} <= c.ended, what="both responses")
    text = c.bodies[sid].decode()
    assert c.heads[sid][":status"] == "200"
    assert "cookie: x=1; y=2" in text, text
    assert "x-custom: v" in text
    assert f"authority={authority}" in text
    assert "path=/a?b=c" in text
    assert "via: 1.1 muxd" in text
    assert "body=5" in c.bodies[sid2].decode()
    c.close()


def test_request_without_length_is_streamed_upstream(h2_setup):
    m, o, authority = h2_setup(echo_head_handler)
    c = H2Client(m, authority)
    sid = c.request("/up", method="PUT", end_stream=False)
    for i in range(4):
        c.conn.send_data(sid, b"x" * 1000)
    c.conn.send_data(sid, b"", end_stream=True)
    c.flush()
    c.until(lambda: sid in c.ended, what="the response")
    assert "body=4000" in c.bodies[sid].decode()


def test_rst_stream_cancels_only_its_exchange(h2_setup):
    def handler(req):
        if req.path == "/slow":
            req.send_head(200, [("content-type", "application/octet-stream")])
            try:
                for _ in range(1000):
                    req.send_data(b"s" * 1024)
                    if req.peer_reset.wait(0.01):
                        return
            except Exception:
                return
            req.send_data(b"", end_stream=True)
        else:
            req.respond(200, [("content-type", "text/plain")], "bystander\n")

    m, o, authority = h2_setup(handler)
    c = H2Client(m, authority)
    slow = c.request("/slow")
    c.until(lambda: slow in c.heads, what="the slow head")
    other = c.request("/other")
    c.conn.reset_stream(slow)
    c.flush()
    c.until(lambda: other in c.ended, what="the bystander's response", no_ack=())
    assert c.bodies[other] == b"bystander\n"
    wait_until(lambda: any(r[3] == "/slow" for r in o.resets), timeout=10,
               what="muxd resetting the upstream stream of the cancelled request")
    again = c.request("/again")
    c.until(lambda: again in c.ended, what="a request after the reset")
    assert c.heads[again][":status"] == "200"
    assert c.goaway is None
    assert o.connections == 1, "the streams did not share the upstream connection"


BIG = 2 * 1024 * 1024


def test_window_closed_stream_does_not_stall_others(h2_setup):
    def handler(req):
        req.send_head(200, [("content-length", str(BIG))])
        try:
            for _ in range(BIG // 16384):
                req.send_data(b"b" * 16384)
            req.send_data(b"", end_stream=True)
        except Exception:
            pass

    m, o, authority = h2_setup(handler)
    c = H2Client(m, authority)
    c.conn.increment_flow_control_window(64 * 1024 * 1024)
    c.flush()
    stalled = c.request("/stalled")
    c.until(lambda: len(c.bodies.get(stalled, b"")) >= 65535, what="the first window",
            no_ack=(stalled,))
    fast = c.request("/fast")
    c.until(lambda: fast in c.ended, timeout=30, what="the other stream", no_ack=(stalled,))
    assert len(c.bodies[fast]) == BIG
    assert stalled not in c.ended
    assert len(c.bodies[stalled]) == 65535
    assert o.connections == 1, "the streams did not share the upstream connection"
    # the stalled one goes on once its window opens
    c.conn.acknowledge_received_data(65535, stalled)
    c.flush()
    c.until(lambda: stalled in c.ended, timeout=30, what="the stalled stream after its window opened")
    assert len(c.bodies[stalled]) == BIG


# --------------------------------------------------------------------------
# protections


def flood_conn(h2_setup):
    m, o, authority = h2_setup()
    c = H2Client(m, authority)
    c.until(lambda: any(f[0] == 0x4 for f in c.frames), what="muxd's SETTINGS")
    return m, c


def assert_calm(m, c, kind):
    assert wait_closed(c), "muxd kept a flooding connection open"
    assert c.goaway == ENHANCE_YOUR_CALM, f"GOAWAY code {c.goaway}"
    wait_until(lambda: metric(m, "muxd_client_h2_flood_total", kind=kind) == 1, timeout=5,
               what=f"muxd_client_h2_flood_total{{kind={kind}}}")


def test_ping_flood_ends_the_connection(h2_setup):
    m, c = flood_conn(h2_setup)
    c.raw(b"".join(frame(0x6, 0, 0, i.to_bytes(8, "big")) for i in range(150)))
    assert_calm(m, c, "ping")


def test_settings_flood_ends_the_connection(h2_setup):
    m, c = flood_conn(h2_setup)
    c.raw(frame(0x4, 0, 0) * 150)
    assert_calm(m, c, "settings")


def test_rapid_reset_ends_the_connection(h2_setup):
    m, c = flood_conn(h2_setup)
    for _ in range(150):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                  (":authority", c.authority), (":path", "/")])
        c.conn.reset_stream(sid)
    c.flush()
    assert_calm(m, c, "rst_stream")


def test_continuation_flood_ends_the_connection(h2_setup):
    import hpack

    m, c = flood_conn(h2_setup)
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"),
                                    (":authority", c.authority), (":path", "/"),
                                    *[(f"x-h{i}", "v" * 20) for i in range(30)]])
    frames = frame(0x1, 0, 1, block[:1])  # HEADERS without END_HEADERS
    frames += b"".join(frame(0x9, 0, 1, block[i:i + 1]) for i in range(1, 40))
    c.raw(frames)
    assert_calm(m, c, "continuation")


def test_streams_beyond_the_limit_are_refused(h2_setup, pki):
    m, o, authority = h2_setup(muxd={"client_h2_max_streams": "5"})
    c = H2Client(m, authority, preface=False)
    c.conn.initiate_connection()
    sids = [c.request("/n") for _ in range(10)]  # one write, before our SETTINGS is known
    c.until(lambda: all(s in c.ended or s in c.reset for s in sids), what="every stream")
    refused = [s for s in sids if c.reset.get(s) == REFUSED_STREAM]
    answered = [s for s in sids if s in c.ended and c.heads[s][":status"] == "200"]
    assert len(answered) == 5 and len(refused) == 5, (c.heads, c.reset)
    again = c.request("/after")
    c.until(lambda: again in c.ended, what="a request within the limit")


def test_header_list_over_64k_gets_431(h2_setup):
    m, o, authority = h2_setup()
    c = H2Client(m, authority)
    sid = c.request("/big-head", headers=[(f"x-f{i}", "v" * 8000) for i in range(9)])
    c.until(lambda: sid in c.ended or sid in c.reset, what="an answer")
    assert c.heads[sid][":status"] == "431"
    assert o.connections == 0, "a head over the limit reached the origin"
    ok = c.request("/fine")
    c.until(lambda: ok in c.ended, what="the next request")
    assert c.heads[ok][":status"] == "200"


# --------------------------------------------------------------------------
# endings and deadlines


def test_goaway_on_shutdown_lets_open_streams_finish(h2_setup):
    import os
    import signal

    release = threading.Event()
    seen = threading.Event()

    def handler(req):
        seen.set()
        release.wait(10)
        req.respond(200, [("content-type", "text/plain")], "late\n")

    m, o, authority = h2_setup(handler)
    c = H2Client(m, authority)
    sid = c.request("/slow")
    assert seen.wait(10), "the request did not reach the origin"
    os.kill(m.pid, signal.SIGTERM)
    c.until(lambda: c.goaway is not None, what="GOAWAY")
    assert c.goaway == 0
    release.set()
    c.until(lambda: sid in c.ended, what="the open stream's response")
    assert c.bodies[sid] == b"late\n"
    assert wait_closed(c), "the connection stayed open after its last stream"


def test_idle_client_gets_goaway_after_client_idle_timeout(h2_setup):
    m, o, authority = h2_setup(muxd={"client_idle_timeout": "500ms"})
    c = H2Client(m, authority)
    sid = c.request("/x")
    c.until(lambda: sid in c.ended, what="the response")
    assert wait_closed(c, timeout=10), "an idle HTTP/2 client stayed connected"
    assert c.goaway == 0


def test_silent_h2_client_is_closed_after_request_header_timeout(h2_setup):
    m, o, authority = h2_setup(muxd={"request_header_timeout": "500ms"})
    c = H2Client(m, authority, preface=False)  # TLS with h2, then nothing
    assert wait_closed(c, timeout=10), "a client that never sent its preface stayed connected"


# --------------------------------------------------------------------------
# bodies and trailers both ways


def test_trailers_both_ways(h2_setup):
    def handler(req):
        got = ";".join(f"{n}={v}" for n, v in req.trailers)
        req.respond(200, [("content-type", "text/plain")], f"trailers={got}\n",
                    trailers=[("grpc-status", "0"), ("grpc-message", "fine")])

    m, o, authority = h2_setup(handler)
    c = H2Client(m, authority)
    sid = c.request("/t", method="POST", headers=[("te", "trailers")], end_stream=False)
    c.conn.send_data(sid, b"payload")
    c.conn.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
    c.flush()
    c.until(lambda: sid in c.ended, what="the response")
    assert c.bodies[sid] == b"trailers=x-checksum=abc\n"
    assert c.trailers[sid] == {"grpc-status": "0", "grpc-message": "fine"}


def test_curl_http2_upload_and_download(muxd, nginx_tls, pki, h2_origin, tmp_path):
    import hashlib

    data = pattern_bytes(3 * 1024 * 1024, seed=5)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    o = h2_origin(lambda req: req.respond(200, [], hashlib.sha256(req.body).hexdigest()))
    (nginx_tls.root / "big").write_bytes(data)
    m = muxd(intercept_conf(pki, o.port))
    out = curl(m.port, f"https://localhost:{o.port}/up", "--http2", "--cacert", local_ca(m),
               "-T", str(f), "-w", " %{http_version}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == hashlib.sha256(data).hexdigest() + " 2"
    m2 = muxd(intercept_conf(pki, nginx_tls.port))
    out = curl(m2.port, f"https://localhost:{nginx_tls.port}/big", "--http2", "--cacert",
               local_ca(m2))
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_client_that_never_opens_its_window_is_closed_after_client_timeout(h2_setup):
    def handler(req):
        req.send_head(200, [])
        try:
            for _ in range(64):
                req.send_data(b"w" * 16384)
            req.send_data(b"", end_stream=True)
        except Exception:
            pass

    m, o, authority = h2_setup(handler, muxd={"client_timeout": "1s"})
    c = H2Client(m, authority)
    c.conn.increment_flow_control_window(16 * 1024 * 1024)
    c.flush()
    sid = c.request("/w")
    c.until(lambda: len(c.bodies.get(sid, b"")) >= 65535, what="the first window", no_ack=(sid,))
    start = time.monotonic()
    assert wait_closed(c, timeout=15, no_ack=(sid,)), "a client that stopped reading stayed connected"
    assert time.monotonic() - start < 10
    assert sid not in c.ended


def test_reload_turning_client_h2_off_drains_with_goaway(muxd, h2_origin, pki):
    release = threading.Event()

    def handler(req):
        if req.path == "/slow":
            release.wait(10)
        req.respond(200, [("content-type", "text/plain")], "ok\n")

    o = h2_origin(handler)
    m = muxd(intercept_conf(pki, o.port))
    authority = f"localhost:{o.port}"
    c = H2Client(m, authority)
    sid = c.request("/slow")
    wait_until(lambda: o.connections == 1, timeout=10, what="the request upstream")
    m.reload(intercept_conf(pki, o.port, muxd={"client_h2": "off"}), wait=True)
    c.until(lambda: c.goaway is not None, what="GOAWAY after the reload")
    assert c.goaway == 0
    release.set()
    c.until(lambda: sid in c.ended, what="the open stream's response")
    assert wait_closed(c), "the drained connection stayed open"
    out = curl(m.port, f"https://{authority}/x", "--http2", "--cacert", local_ca(m),
               "-w", "\n%{http_version}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(b"\n1.1")


# --------------------------------------------------------------------------
# HEAD, 204, 304 and Expect over HTTP/2 to the client, h1 and h2 upstreams


@pytest.mark.parametrize("upstream", ["h1", "h2"])
def test_bodyless_answers_over_http2(muxd, tls_nginx_factory, pki, upstream):
    ng = tls_nginx_factory(http2=upstream == "h2",
                           extra="location = /nothing { return 204; }")
    (ng.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, ng.port))
    base = f"https://localhost:{ng.port}"
    ca = local_ca(m)
    out = curl(m.port, base + "/1k", "--http2", "--cacert", ca, "-I", "-w", "%{http_version}")
    assert out.returncode == 0, out.stderr
    head = out.stdout.decode().lower()
    assert "\nhttp/2 200" in head, head
    assert "content-length: 1024" in head
    assert head.endswith("2")
    out = curl(m.port, base + "/nothing", "--http2", "--cacert", ca, "-w", "%{http_code} %{http_version}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"204 2"
    etag = re.search(r"etag: (\S+)", head).group(1)
    out = curl(m.port, base + "/1k", "--http2", "--cacert", ca, "-H", f"If-None-Match: {etag}",
               "-w", "%{http_code} %{http_version}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"304 2"


def test_expect_continue_from_an_http2_client(h2_origin, muxd, pki):
    """Towards an HTTP/2 origin muxd answers Expect itself: a 100 HEADERS."""
    o = h2_origin(lambda req: req.respond(200, [], f"got {len(req.body)}\n"))
    m = muxd(intercept_conf(pki, o.port))
    c = H2Client(m, f"localhost:{o.port}")
    sid = c.request("/up", method="PUT", headers=[("expect", "100-continue"),
                                                 ("content-length", "3")], end_stream=False)
    c.until(lambda: any(isinstance(e, h2.events.InformationalResponseReceived)
                        and e.stream_id == sid for e in c.got), what="100 Continue")
    c.conn.send_data(sid, b"abc", end_stream=True)
    c.flush()
    c.until(lambda: sid in c.ended, what="the response")
    assert c.bodies[sid] == b"got 3\n"


def test_unread_response_tail_still_has_client_timeout(h2_setup):
    """The exchange is over (its whole response buffered in muxd), but the
    client never opens its window for the rest: client_timeout still holds."""
    m, o, authority = h2_setup(lambda req: req.respond(200, [], b"t" * (120 * 1024)),
                               muxd={"client_timeout": "1s"})
    c = H2Client(m, authority)
    c.conn.increment_flow_control_window(16 * 1024 * 1024)
    c.flush()
    sid = c.request("/t")
    c.until(lambda: len(c.bodies.get(sid, b"")) >= 65535, what="the first window", no_ack=(sid,))
    start = time.monotonic()
    assert wait_closed(c, timeout=15, no_ack=(sid,)), "a client that stopped reading stayed connected"
    assert time.monotonic() - start < 10


def test_trailers_between_an_http2_client_and_an_h1_chunked_origin(muxd, pki):
    """h2 client -> h1 upstream: the request's trailers go out as chunked
    trailers, the origin's chunked trailers come back as a trailing HEADERS."""
    seen = {}
    lsock = socket.socket()
    lsock.bind((LOCALHOST, 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
    sctx.set_alpn_protocols(["http/1.1"])

    def serve():
        raw, _ = lsock.accept()
        with sctx.wrap_socket(raw, server_side=True) as s:
            f = s.makefile("rb")
            head = []
            while (line := f.readline()) not in (b"\r\n", b""):
                head.append(line.decode("latin-1").rstrip("\r\n"))
            seen["head"] = head
            body = b""
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    break
                body += f.read(size)
                f.readline()
            trailers = []
            while (line := f.readline()) not in (b"\r\n", b""):
                trailers.append(line.decode("latin-1").rstrip("\r\n"))
            seen["body"], seen["trailers"] = body, trailers
            s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n"
                      b"Content-Type: text/plain\r\n\r\n4\r\ndone\r\n0\r\ngrpc-status: 7\r\n\r\n")
            try:
                f.read()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        m = muxd(intercept_conf(pki, port))
        c = H2Client(m, f"localhost:{port}")
        sid = c.request("/c", method="POST", headers=[("te", "trailers")], end_stream=False)
        c.conn.send_data(sid, b"chunk")
        c.conn.send_headers(sid, [("x-checksum", "abc")], end_stream=True)
        c.flush()
        c.until(lambda: sid in c.ended, what="the response")
        assert seen["body"] == b"chunk"
        assert any(h.lower() == "x-checksum: abc" for h in seen["trailers"]), seen
        assert c.bodies[sid] == b"done"
        assert c.trailers[sid] == {"grpc-status": "7"}
        c.close()
    finally:
        lsock.close()


def test_descriptor_shortage_closes_idle_http2_clients(muxd, h2_origin, pki):
    """RLIMIT_NOFILE 64: HTTP/2 clients that made one request and sit idle
    would take every descriptor; muxd closes the oldest idle ones, and new
    clients are still served."""
    import resource

    o = h2_origin()
    m = muxd(intercept_conf(pki, o.port),
             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    authority = f"localhost:{o.port}"
    clients = []
    try:
        for i in range(70):
            c = H2Client(m, authority)
            clients.append(c)
            sid = c.request(f"/idle{i}")
            c.until(lambda: sid in c.ended, what=f"client {i}'s response")
            assert c.heads[sid][":status"] == "200"
        assert wait_closed(clients[0], timeout=5), "the oldest idle client was not closed"
        last = clients[-1]
        sid = last.request("/again")
        last.until(lambda: sid in last.ended, what="the newest client's second response")
        assert m.proc.poll() is None
    finally:
        for c in clients:
            c.close()
