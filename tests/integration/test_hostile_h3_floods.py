"""HTTP/3 floods from an origin (issue 16 items 1 and 4): stream resets,
STOP_SENDING on uploads, control-stream floods of reserved frames and of
GOAWAYs, an endless reserved-type unidirectional stream, empty DATA
frames, and more unidirectional streams than muxd allows.  Scripted by
tests/h3origin/h3origin.c (the attack is chosen by :path; the raw ones
are written with ngtcp2 past nghttp3).

Each test asserts: muxd alive with its RSS bounded, the attacked client's
answer (502 or a cut response where the flood ends the connection, as for
HTTP/2), a bystander on the same QUIC connection (an open SSE stream) or,
when the connection had to end, on the same origin, and that muxd does
not spin once the attack is over (its CPU time stops growing).
"""

import time

import pytest

from support import HTTPReader, IncompleteResponse, wait_until
from test_hostile import assert_rss, in_thread, result
from test_hostile_h3_origin import SseBystander, conf, get, h3_only_muxd, request, tls_client

CLK_TCK = 100  # USER_HZ: /proc/PID/stat counts CPU time in these


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def assert_quiet(m, what="after the attack", timeout=15):
    """muxd's CPU time stops growing: within timeout, one second in which it
    used less than 5 % of a core."""

    def quiet():
        t0 = cpu_ticks(m.pid)
        time.sleep(1.0)
        return cpu_ticks(m.pid) - t0 < CLK_TCK // 20

    wait_until(quiet, timeout=timeout, interval=0, what=f"muxd to stop using CPU {what}")


def origin_log_wait(o, line, timeout=30):
    wait_until(lambda: line in o.log(), timeout=timeout, what=f"h3origin to log {line!r}")


def later_request_ok(m, o, path="/later"):
    """A bystander on the same origin, after the attack: 200 "ok"."""
    r = get(m, o, path)
    assert r.status == 200 and r.body == b"ok", r
    return [c for c, _, p in o.requests() if p == path]


class HeldBystander:
    """A GET /held in flight on the origin's first connection, not answered
    (so never processed) until release(): when that connection ends, muxd
    must send it again on a new one."""

    def __init__(self, m, o):
        self.o = o
        self.t, self.out = in_thread(get, m, o, "/held")
        o.wait_request("/held")

    def answered_after_retry(self):
        wait_until(lambda: [c for c, _, p in self.o.requests() if p == "/held" and c != 1], timeout=10,
                   what="muxd to send /held again on a new connection")
        self.o.trigger("release")
        r = result(self.t, self.out)
        assert r.status == 200 and r.body == b"ok", r


def flood_logged(m, kind, what):
    """muxd logged the flood (what: words of its line) and counted it in
    muxd_upstream_flood_total{proto="h3",kind}."""
    wait_until(lambda: [ln for ln in m.log().splitlines() if "(a flood)" in ln and what in ln], timeout=15,
               what=f"muxd to log the flood of {what}")
    assert m.metrics().value("muxd_upstream_flood_total", proto="h3", kind=kind) == 1


def test_h3_reset_flood_reaches_only_the_reset_streams(muxd, h3_origin, pki):
    """200 requests that the origin resets at once (H3_INTERNAL_ERROR), 50
    at a time: 502 each, the SSE stream on the same connection goes on, and
    a later request shares the connection."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    for _ in range(4):
        runs = [in_thread(get, m, o, "/reset") for _ in range(50)]
        codes = [result(t, out, timeout=30).status for t, out in runs]
        assert codes == [502] * 50, codes
    by.next_event("after")
    by.close()
    assert later_request_ok(m, o) == [1], o.log()
    assert_rss(m)
    assert_quiet(m)


def test_h3_stop_sending_on_uploads_gets_the_early_response(muxd, h3_origin, pki):
    """The origin answers 200 at once and stops the upload with STOP_SENDING
    (H3_NO_ERROR): 20 clients uploading 4 MiB each get that 200 whole, and
    the SSE stream on the same connection goes on."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    size = 4 * 1024 * 1024

    def upload():
        with tls_client(m, o) as s:
            s.sendall(request(o, "/stop", "POST", [("Content-Length", str(size))]))
            s.settimeout(20)
            sent = 0
            try:
                while sent < size:  # muxd may close once the answer is out
                    s.sendall(b"u" * 65536)
                    sent += 65536
            except OSError:
                pass
            return HTTPReader(s).read_response()

    runs = [in_thread(upload) for _ in range(20)]
    for t, out in runs:
        r = result(t, out, timeout=40)
        assert r.status == 200 and r.body == b"ok", r
    by.next_event("after")
    by.close()
    assert_rss(m)
    assert_quiet(m)


def test_h3_reserved_frame_flood_on_the_control_stream_ends_the_connection(muxd, h3_origin, pki):
    """1 000 000 reserved frames (type 0x21, 2 MB) on the origin's control
    stream: bytes that carry nothing, which nghttp3 ignores. muxd ends the
    connection (H3_EXCESSIVE_LOAD, "flood" logged and counted); the SSE
    stream on it is cut, a request the origin had not answered yet is sent
    again on a new connection, and a later request goes there too."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    held = HeldBystander(m, o)
    t, out = in_thread(get, m, o, "/ctrlflood?n=1000000")
    flood_logged(m, "control", "control, QPACK or reserved streams")
    with pytest.raises(IncompleteResponse):
        by.next_event("after")  # cut with the connection
    r = result(t, out)
    assert r.status == 200 and r.body == b"ok", r  # answered before the flood
    held.answered_after_retry()
    assert 1 not in later_request_ok(m, o), o.log()
    assert_rss(m)
    assert_quiet(m)


def test_h3_goaway_flood_ends_the_connection(muxd, h3_origin, pki):
    """100 000 GOAWAY frames, all for stream 4000 (valid: never increasing):
    the first one stops new streams; the rest are a flood that ends the
    connection. Later requests go on a new connection."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    r = get(m, o, "/goawayflood?n=100000")
    assert r.status in (200, 502), r
    flood_logged(m, "control", "control, QPACK or reserved streams")
    by.close()
    assert 1 not in later_request_ok(m, o), o.log()
    assert_rss(m)
    assert_quiet(m)


def test_h3_endless_reserved_stream_ends_the_connection(muxd, h3_origin, pki):
    """A unidirectional stream of reserved type 0x21 carrying 64 MiB: muxd
    buffers none of it (RSS bounded), and ends the connection as a flood
    instead of reading it at line rate; the unanswered request goes again
    on a new connection, later requests are served."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    held = HeldBystander(m, o)
    t, out = in_thread(get, m, o, "/greasestream?mib=64")
    assert_rss(m, "during the stream")
    r = result(t, out, timeout=30)
    assert r.status == 200 and r.body == b"ok", r
    flood_logged(m, "control", "control, QPACK or reserved streams")
    held.answered_after_retry()
    by.close()
    assert 1 not in later_request_ok(m, o), o.log()
    assert_rss(m)
    assert_quiet(m)


def test_h3_empty_data_flood_cuts_the_response(muxd, h3_origin, pki):
    """HEADERS, then 100 000 empty DATA frames, then "ok": the response
    head is out, so the client sees the response cut (never passed off as
    whole); the connection ends as a flood, the unanswered request goes
    again on a new connection and later requests are served."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    held = HeldBystander(m, o)
    with tls_client(m, o) as s:
        s.sendall(request(o, "/emptydata?n=100000"))
        s.settimeout(20)
        with pytest.raises(IncompleteResponse):
            HTTPReader(s).read_response()
    flood_logged(m, "frames", "empty or unknown frames on request streams")
    held.answered_after_retry()
    by.close()
    assert 1 not in later_request_ok(m, o), o.log()
    assert_rss(m)
    assert_quiet(m)


def test_h3_more_unidirectional_streams_than_allowed_are_refused(muxd, h3_origin, pki):
    """The origin opens reserved-type unidirectional streams as fast as
    muxd's MAX_STREAMS allows (16, three of them its control and QPACK
    streams), each closed at once: ngtcp2 never lets it open more than
    muxd grants and never grows that limit: the origin is stopped after
    13. Everything else goes on: the SSE stream, later requests on the
    same connection."""
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, **conf(response_timeout="60s"))
    by = SseBystander(m, o)
    r = get(m, o, "/unistreams?n=2000")
    assert r.status == 200 and r.body == b"blocked 13", r
    by.next_event("after")
    assert later_request_ok(m, o) == [1], o.log()
    by.next_event("later")
    by.close()
    assert "flood 1 unistreams done" not in o.log() and o.log().count("unistreams 1 ") == 1, o.log()
    assert_rss(m)
    assert_quiet(m)
