"""Errors clients see: 400 (connection closed), 431, 403, 502, 504, and a
response that breaks after its head was sent."""

import select
import socket

import pytest

from support import (HTTPReader, IncompleteResponse, closed_port, connect, curl, proxy_request,
                     raw_exchange)


def expect_400_and_close(port, data):
    resp, reader = raw_exchange(port, data)
    with reader.sock:
        assert resp.status == 400, resp
        assert reader.wait_eof(), "muxd kept the connection open after 400"


def head(url, *lines, method="GET"):
    authority = url.split("/")[2]
    text = f"{method} {url} HTTP/1.1\r\nHost: {authority}\r\n"
    return text.encode() + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


# (id, header lines, body) -- all must be refused before reaching the origin
MALFORMED_HEAD = [
    ("cl-and-te", [b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n", "POST"),
    ("differing-content-lengths", [b"Content-Length: 5", b"Content-Length: 6"], b"hello!", "POST"),
    ("differing-content-length-list", [b"Content-Length: 5, 6"], b"hello!", "POST"),
    ("te-gzip", [b"Transfer-Encoding: gzip"], b"", "POST"),
    ("te-chunked-then-gzip", [b"Transfer-Encoding: chunked, gzip"], b"", "POST"),
    ("obs-fold", [b"X-Folded: first", b"  continued"], b"", "GET"),
    ("bare-cr", [b"X-Bad: a\rb"], b"", "GET"),
    ("nul-in-field", [b"X-Bad: a\x00b"], b"", "GET"),
    ("control-in-field", [b"X-Bad: a\x01b"], b"", "GET"),
]


@pytest.mark.parametrize("lines,body,method", [c[1:] for c in MALFORMED_HEAD], ids=[c[0] for c in MALFORMED_HEAD])
def test_malformed_head_400(muxd, origin, lines, body, method):
    o = origin()
    m = muxd()
    expect_400_and_close(m.port, head(o.url("/m"), *lines, method=method) + body)
    assert o.requests == [], "a malformed request reached the origin"


@pytest.mark.parametrize("chunk", [b"zz\r\nhello\r\n0\r\n\r\n", b"10000000000000000\r\nhello\r\n0\r\n\r\n",
                                   b"-5\r\nhello\r\n0\r\n\r\n"],
                         ids=["non-hex", "overflow", "negative"])
def test_bad_chunk_size_400(muxd, origin, chunk):
    o = origin()
    m = muxd()
    expect_400_and_close(m.port, head(o.url("/c"), b"Transfer-Encoding: chunked", method="POST") + chunk)


def test_userinfo_in_uri_400(muxd, origin):
    o = origin()
    m = muxd()
    expect_400_and_close(m.port, f"GET http://u:p@{o.authority}/x HTTP/1.1\r\nHost: {o.authority}\r\n\r\n".encode())
    assert o.requests == []


def test_head_too_large_431(muxd, origin):
    o = origin()
    m = muxd()
    resp, reader = raw_exchange(m.port, head(o.url("/big"), b"X-Big: " + b"a" * (70 * 1024)))
    reader.sock.close()
    assert resp.status == 431
    assert o.requests == []


def test_head_below_limit_passes(muxd, origin):
    o = origin()
    m = muxd()
    resp, reader = raw_exchange(m.port, head(o.url("/big"), *[b"X-Big-%d: " % i + b"b" * 1000 for i in range(50)]))
    reader.sock.close()
    assert resp.status == 200
    assert o.requests[0].headers.get("x-big-49") == "b" * 1000


def test_client_not_allowed_403(muxd, origin):
    o = origin()
    m = muxd({"muxd": {"allow": "10.0.0.0/8"}})
    r = curl(m.port, o.url("/"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"403", r
    assert o.requests == []


def expect_502(port, url, host):
    resp, reader = raw_exchange(port, proxy_request("GET", url))
    reader.sock.close()
    assert resp.status == 502, resp
    assert resp.headers.get("content-type", "").startswith("text/plain"), resp.headers
    text = resp.text.strip()
    assert "\n" not in text, f"502 body is not one line: {text!r}"
    assert host in text, f"502 body does not name {host}: {text!r}"
    return text


def test_dns_failure_502(muxd):
    m = muxd()
    expect_502(m.port, "http://nosuch.invalid/x", "nosuch.invalid")


def test_connection_refused_502(muxd):
    m = muxd()
    expect_502(m.port, f"http://127.0.0.1:{closed_port()}/x", "127.0.0.1")


def test_malformed_response_502(muxd, origin):
    def garbage(req, conn):
        conn.send(b"this is not HTTP at all\r\n\r\n")
        conn.close()

    o = origin(garbage)
    m = muxd()
    expect_502(m.port, o.url("/g"), "127.0.0.1")


def test_response_timeout_504(muxd, origin):
    o = origin(lambda req, conn: o.stopping.wait(30))  # reads the request, never answers
    m = muxd({"pool": {"response_timeout": "1s"}})
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/never")), timeout=20)
    reader.sock.close()
    assert resp.status == 504
    assert len(o.requests) == 1


def hanging_port():
    """A loopback port whose connect() does not complete: a listener with
    backlog 0 whose accept queue is full.  Returns (port, sockets to close)
    or None when this kernel completes such connects anyway."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    socks = [listener]
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        socks.append(c)
        # a connect that completes makes the socket writable (at once on
        # loopback); one whose SYN the full queue drops does not, and 1 s is
        # the first SYN retransmission, which meets the same full queue
        select.select([], [c], [], 1.0)
        try:
            c.getpeername()
        except OSError:
            return port, socks  # this one hangs: the queue is full
    for s in socks:
        s.close()
    return None


def test_connect_timeout_504(muxd):
    hanging = hanging_port()
    if hanging is None:
        pytest.skip("loopback connects to a full backlog complete on this kernel; cannot make connect hang")
    port, socks = hanging
    try:
        m = muxd({"pool": {"connect_timeout": "1s"}})
        resp, reader = raw_exchange(m.port, proxy_request("GET", f"http://127.0.0.1:{port}/x"), timeout=20)
        reader.sock.close()
        assert resp.status == 504
    finally:
        for s in socks:
            s.close()


def broken_origin(req, conn):
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 10000)
    conn.close()


def test_response_broken_after_head_raw(muxd, origin):
    o = origin(broken_origin)
    m = muxd()
    with connect(m.port, timeout=20) as s:
        s.sendall(proxy_request("GET", o.url("/broken")))
        reader = HTTPReader(s)
        with pytest.raises(IncompleteResponse):
            reader.read_response()
        assert reader.eof


def test_response_broken_after_head_curl(muxd, origin):
    o = origin(broken_origin)
    m = muxd()
    r = curl(m.port, o.url("/broken"), "-o", "/dev/null")
    assert r.returncode != 0, "curl saw a complete response"
