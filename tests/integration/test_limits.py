"""Documented limits, one status each, the same in absolute form and inside
an intercepted TLS session: a request target over 16 KiB gets 414, a request
head over 64 KiB (or over 128 fields) 431, an upstream response head over
64 KiB 502 "response head too large"; and a request with bare LF line
endings gets 400 at once (never a connection held open waiting for a CRLF
CRLF that will not come)."""

import ssl
import time

from support import (
    HTTPReader,
    connect,
    open_tunnel,
    proxy_request,
)

MAX_TARGET = 16 * 1024
NO_INTERCEPT = {"intercept": {"enabled": "off"}}


def ask(m, data, timeout=5):
    with connect(m.port, timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return HTTPReader(s).read_response()


def intercepted(m, port):
    """A TLS session with muxd inside CONNECT localhost:port."""
    resp, reader = open_tunnel(m.port, f"localhost:{port}")
    assert resp.status == 200, resp
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    tls = ctx.wrap_socket(reader.sock, server_hostname="localhost")
    tls.settimeout(5)
    return tls


# --------------------------------------------------------------------------
# bare LF


def test_bare_lf_request_gets_400_at_once(muxd, origin):
    o = origin()
    m = muxd({"muxd": {"request_header_timeout": "60s"}, **NO_INTERCEPT})
    for data in (
        f"GET {o.url('/lf')} HTTP/1.1\nHost: {o.authority}\n\n".encode(),
        f"GET {o.url('/lf')} HTTP/1.1\r\nHost: {o.authority}\n\n".encode(),
        f"GET {o.url('/lf')} HTTP/1.1\r\nHost: {o.authority}\r\n\n".encode(),
    ):
        start = time.monotonic()
        resp = ask(m, data)
        assert resp.status == 400, (data, resp)
        assert time.monotonic() - start < 5
    assert not o.requests


def test_bare_lf_inside_an_intercepted_session_gets_400(muxd, stream_server):
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"muxd": {"request_header_timeout": "60s"}, "intercept": {"ports": silent.port}})
    with intercepted(m, silent.port) as tls:
        tls.sendall(b"GET / HTTP/1.1\nHost: localhost\n\n")
        resp = HTTPReader(tls).read_response()
    assert resp.status == 400, resp


# --------------------------------------------------------------------------
# request targets


def test_16k_target_is_forwarded(muxd, origin):
    o = origin()
    m = muxd(NO_INTERCEPT)
    path = "/q?" + "a" * (MAX_TARGET - len(o.url("/q?")))
    url = o.url(path)
    assert len(url) == MAX_TARGET
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 200, resp
    assert resp.json()["target"] == path


def test_target_over_the_limit_gets_414(muxd, origin):
    o = origin()
    m = muxd(NO_INTERCEPT)
    url = o.url("/q?" + "a" * MAX_TARGET)
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 414, resp
    assert b"request target too long" in resp.body
    assert not o.requests


def test_target_over_the_limit_gets_414_inside_interception(muxd, stream_server):
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"intercept": {"ports": silent.port}})
    with intercepted(m, silent.port) as tls:
        tls.sendall(f"GET /q?{'a' * MAX_TARGET} HTTP/1.1\r\nHost: localhost:{silent.port}\r\n\r\n".encode())
        resp = HTTPReader(tls).read_response()
    assert resp.status == 414, resp


# --------------------------------------------------------------------------
# request heads


def big_head_fields():
    return [(f"X-Big-{i}", "v" * 1000) for i in range(70)]


def test_request_head_too_large_gets_431(muxd, origin):
    o = origin()
    m = muxd(NO_INTERCEPT)
    resp = ask(m, proxy_request("GET", o.url("/big"), headers=big_head_fields()))
    assert resp.status == 431, resp
    many = [(f"X-F{i}", "v") for i in range(200)]
    resp = ask(m, proxy_request("GET", o.url("/many"), headers=many))
    assert resp.status == 431, resp
    assert not o.requests


def test_request_head_too_large_gets_431_inside_interception(muxd, stream_server):
    silent = stream_server(lambda sock: sock.recv(1))
    m = muxd({"intercept": {"ports": silent.port}})
    with intercepted(m, silent.port) as tls:
        head = f"GET / HTTP/1.1\r\nHost: localhost:{silent.port}\r\n"
        head += "".join(f"{n}: {v}\r\n" for n, v in big_head_fields()) + "\r\n"
        try:
            tls.sendall(head.encode())
        except (OSError, ssl.SSLError):
            pass
        resp = HTTPReader(tls).read_response()
    assert resp.status == 431, resp


# --------------------------------------------------------------------------
# upstream response heads


def test_response_head_too_large_is_502_naming_it(muxd, origin):
    def huge_head(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")

    o = origin(huge_head)
    m = muxd(NO_INTERCEPT)
    resp = ask(m, proxy_request("GET", o.url("/huge")), timeout=10)
    assert resp.status == 502, resp
    assert b"response head too large" in resp.body, resp.body


def test_connection_survives_limits_answered_with_close(muxd, origin):
    """414 and 431 close the connection (the rest of the head is unread)."""
    o = origin()
    m = muxd(NO_INTERCEPT)
    with connect(m.port, timeout=5) as s:
        s.sendall(proxy_request("GET", o.url("/q?" + "a" * MAX_TARGET)))
        reader = HTTPReader(s)
        resp = reader.read_response()
        assert resp.status == 414
        assert "close" in resp.headers.tokens("connection")
        assert reader.wait_eof(5)
