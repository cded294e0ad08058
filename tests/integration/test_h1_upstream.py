"""HTTP/1.1 to origins, against origins of the tests' own: interim heads
sharing a write with the final head, a slow uploader under a short
response_timeout, a long poll under the default settings (slow), and
Content-Length values beyond a signed 64-bit length in either direction,
and the bound on durations in the configuration."""

import socket
import subprocess
import time

import pytest

from support import MUXD_BIN, HTTPReader, connect, proxy_request, raw_exchange

INT64_OVER = "9223372036854775808"  # INT64_MAX + 1


def request_head(method, url, *lines):
    authority = url.split("/")[2]
    text = f"{method} {url} HTTP/1.1\r\nHost: {authority}\r\n"
    return (text + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


# --------------------------------------------------------------------------
# 1xx and the final head in one read


@pytest.mark.parametrize("interim", [
    [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"],
    [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>\r\n\r\n"],
], ids=["103", "100-103"])
def test_interim_and_final_head_in_one_write(muxd, origin, interim):
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

    def handler(req, conn):
        conn.send(b"".join(interim) + final)  # one write: one segment on loopback

    o = origin(handler)
    m = muxd()
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/early")), timeout=10)
    reader.sock.close()
    assert [i.status for i in resp.interim] == [int(h[9:12]) for h in interim], resp.interim
    assert resp.interim[-1].headers.get("link") == interim[-1].split(b"Link: ")[1].split(b"\r\n")[0].decode()
    assert resp.status == 200, resp
    assert resp.body == b"hello"


# --------------------------------------------------------------------------
# response_timeout counts silence in both directions


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_upload_outlives_response_timeout(muxd, origin, framing):
    """The body takes ~2.7 s, a piece every 300 ms, under a 1 s
    response_timeout: progress keeps the exchange alive, the origin's 200
    comes back with the whole body counted."""
    pieces = [b"piece-%02d;" % i for i in range(9)]
    body = b"".join(pieces)
    o = origin()  # echo_handler: a JSON description of the request it got
    m = muxd({"pool": {"response_timeout": "1s"}})
    if framing == "chunked":
        head = request_head("POST", o.url("/upload"), "Transfer-Encoding: chunked")
        frames = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    else:
        head = request_head("POST", o.url("/upload"), f"Content-Length: {len(body)}")
        frames = list(pieces)
    with connect(m.port, timeout=20) as s:
        s.sendall(head)
        started = time.monotonic()
        for frame in frames:
            time.sleep(0.3)  # the uploader's pace, not an ordering: this is the slowness under test
            s.sendall(frame)
        assert time.monotonic() - started > 2.0  # longer than response_timeout, twice over
        resp = HTTPReader(s).read_response()
    assert resp.status == 200, resp
    got = resp.json()
    assert got["length"] == len(body)
    assert got["chunked"] == (framing == "chunked")


def test_stalled_upload_still_times_out(muxd, origin):
    """The other side of the same timer: an upload that stops moving gets
    the 504 within a short configured response_timeout."""
    o = origin()
    m = muxd({"pool": {"response_timeout": "1s"}})
    with connect(m.port, timeout=20) as s:
        s.sendall(request_head("POST", o.url("/stall"), "Content-Length: 100") + b"only some")
        resp = HTTPReader(s).read_response()
    assert resp.status == 504, resp


# --------------------------------------------------------------------------
# long polls under the default settings


@pytest.mark.slow
def test_long_poll_75s_under_defaults(muxd, origin):
    """An origin that answers after 75 s (long polling, watch APIs): under
    the default response_timeout (15 min) the answer gets through. Was cut
    at 60 s with a 504."""
    o = origin(lambda req, conn: o.stopping.wait(75) or conn.respond(200, body=b"news"))
    m = muxd()
    assert "response_timeout" not in m.conf_path.read_text(), "the test must run on the default"
    started = time.monotonic()
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/poll")), timeout=120)
    reader.sock.close()
    assert resp.status == 200, resp
    assert resp.body == b"news"
    assert time.monotonic() - started >= 75


# --------------------------------------------------------------------------
# Content-Length beyond INT64_MAX


@pytest.mark.parametrize("value", [INT64_OVER, "18446744073709551615", f"5, {INT64_OVER}"],
                         ids=["int64-max-plus-1", "uint64-max", "in-a-list"])
def test_request_content_length_over_int64_is_400(muxd, origin, value):
    o = origin()
    m = muxd()
    resp, reader = raw_exchange(m.port, request_head("POST", o.url("/big"), f"Content-Length: {value}") + b"abc")
    with reader.sock:
        assert resp.status == 400, resp
        assert reader.wait_eof(), "muxd kept the connection open after 400"
    assert o.requests == [], "the request reached the origin"


@pytest.mark.parametrize("value", [INT64_OVER, "18446744073709551615"], ids=["int64-max-plus-1", "uint64-max"])
def test_response_content_length_over_int64_is_502(muxd, stream_server, value):
    def handler(sock):
        f = sock.makefile("rb")
        while f.readline() not in (b"\r\n", b""):
            pass
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\nabc".encode())
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        f.read()  # until muxd closes

    srv = stream_server(handler)
    m = muxd()
    resp, reader = raw_exchange(m.port, proxy_request("GET", f"http://{srv.authority}/huge"), timeout=10)
    reader.sock.close()
    assert resp.status == 502, resp
    assert srv.authority.split(":")[0] in resp.text


# --------------------------------------------------------------------------
# durations are bounded (365 days)


def test_duration_over_a_year_is_a_config_error(tmp_path):
    path = tmp_path / "long.conf"
    path.write_text("[pool]\nidle_timeout = 8760h\n\nresponse_timeout = 8761h\n")
    proc = subprocess.run([MUXD_BIN, "-t", "-c", str(path)], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1, proc.stderr
    want = f"{path}:4: [pool] response_timeout: duration '8761h' too long (expected at most 8760h, 365 days)"
    assert want in proc.stderr, proc.stderr
    assert f"{path}:2:" not in proc.stderr, proc.stderr
