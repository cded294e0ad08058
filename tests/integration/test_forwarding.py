"""Plain forwarding: GET, keep-alive, pipelining, HTTP/1.0 clients,
Expect: 100-continue, and large uploads in both framings."""

import json
import socket
import time

import pytest

from support import HTTPReader, connect, curl, pattern_bytes, proxy_request, recv_all, sha256


def test_get_through_proxy(muxd, origin):
    o = origin()
    m = muxd()
    r = curl(m.port, o.url("/path/x?q=1&r=2"), "-H", "X-Test: hello")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["method"] == "GET"
    assert seen["target"] == "/path/x?q=1&r=2"  # origin-form upstream
    headers = {n.lower(): v for n, v in seen["headers"]}
    assert headers["host"] == o.authority
    assert headers["x-test"] == "hello"


def test_keep_alive_client_connection(muxd, origin):
    o = origin()
    m = muxd()
    with connect(m.port) as s:
        reader = HTTPReader(s)
        for i in range(3):
            s.sendall(proxy_request("GET", o.url(f"/ka/{i}")))
            resp = reader.read_response()
            assert resp.status == 200
            assert resp.json()["target"] == f"/ka/{i}"


def test_pipelined_requests_answered_in_order(muxd, origin):
    def handler(req, conn):
        if req.target == "/slow":
            time.sleep(0.3)  # a later request must not overtake this one
        conn.respond_json(req.as_json())

    o = origin(handler)
    m = muxd()
    body = b"posted body"
    batch = (proxy_request("GET", o.url("/slow"))
             + proxy_request("GET", o.url("/fast"))
             + proxy_request("POST", o.url("/post"), body=body)
             + proxy_request("GET", o.url("/last")))
    with connect(m.port) as s:
        s.sendall(batch)
        reader = HTTPReader(s)
        got = [reader.read_response().json() for _ in range(4)]
    assert [g["target"] for g in got] == ["/slow", "/fast", "/post", "/last"]
    assert got[2]["sha256"] == sha256(body)


def test_client_that_half_closes_after_its_request_gets_the_whole_response(muxd, origin):
    """A client that sends its request and then its FIN (`printf ... | nc`)
    gets the whole response, then muxd closes at once: the EOF it saw during
    the exchange is not waited for again by the lingering close."""
    o = origin()
    m = muxd()
    with connect(m.port) as s:
        s.sendall(proxy_request("GET", o.url("/half")))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(2)  # well below the lingering close's limit
        raw = recv_all(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw
    assert json.loads(body)["target"] == "/half"


def test_http10_client(muxd, origin):
    payload = pattern_bytes(20000, seed=10)
    o = origin(lambda req, conn: conn.respond(body=payload, chunked=True))
    m = muxd()
    with connect(m.port) as s:
        s.sendall(f"GET {o.url('/old')} HTTP/1.0\r\n\r\n".encode())  # no Host, no keep-alive
        reader = HTTPReader(s)
        resp = reader.read_response()
        assert resp.status == 200
        assert "transfer-encoding" not in resp.headers, "chunked sent to an HTTP/1.0 client"
        assert resp.body == payload
        assert reader.wait_eof(), "HTTP/1.0 connection without keep-alive was not closed"
    host = o.requests[0].headers.get("host")
    assert host == o.authority


def test_expect_100_continue_relayed(muxd, origin):
    o = origin()
    m = muxd()
    body = b"x" * 5000
    head = proxy_request("POST", o.url("/expect"), headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))])
    with connect(m.port, timeout=10) as s:
        s.sendall(head)
        reader = HTTPReader(s)
        interim = reader.read_head()  # before the body is sent
        assert interim[1] == 100, interim
        s.sendall(body)
        resp = reader.read_response()
    assert resp.status == 200
    seen = resp.json()
    assert seen["sha256"] == sha256(body)
    assert "100-continue" in o.requests[0].headers.tokens("expect")
    assert o.requests[0].sent_continue


UPLOAD_SIZE = 6 * 1024 * 1024


@pytest.mark.parametrize("mode", ["content-length", "chunked-stdin", "chunked-header"])
def test_large_upload_intact(muxd, origin, tmp_path, mode):
    o = origin()
    m = muxd()
    data = pattern_bytes(UPLOAD_SIZE, seed=3)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    if mode == "content-length":
        r = curl(m.port, o.url("/up"), "-T", str(path))
    elif mode == "chunked-stdin":
        r = curl(m.port, o.url("/up"), "-T", "-", input=data)
    else:
        r = curl(m.port, o.url("/up"), "--data-binary", f"@{path}", "-H", "Transfer-Encoding: chunked")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["length"] == UPLOAD_SIZE
    assert seen["sha256"] == sha256(data)
