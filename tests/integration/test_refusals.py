"""Every answer muxd makes by itself (400, 403, 408, 414, 431, 502, 503,
504, 508) is explained where the user looks: its body names the fix (the
key of muxd.conf, the limit, the loop), and muxd logs exactly one info line
per refusal with client, method, target, status and reason ("refused
client=ADDR method=M target=T status=S: REASON"), rate-limited per status
under a flood (at most 10 lines a second, then a "suppressed M similar"
line)."""

import re
import threading

from support import (
    HTTPReader,
    closed_port,
    connect,
    open_tunnel,
    proxy_request,
    wait_until,
)

NO_INTERCEPT = {"intercept": {"enabled": "off"}}
LINE = re.compile(
    r"^muxd: info: refused client=(\S+) method=(\S+) target=(\S+) status=(\d+): (.*)$", re.M
)


def ask(m, data, timeout=10):
    with connect(m.port, timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return HTTPReader(s).read_response()


def refusals(m, status):
    return [x for x in LINE.findall(m.log()) if x[3] == str(status)]


def one_refusal(m, status, method, target, *reason):
    """The one log line of a refusal (polled: the answer may be read before
    the line is flushed), with its fields."""
    lines = wait_until(lambda: refusals(m, status), timeout=10, what=f"a {status} log line")
    assert len(lines) == 1, lines
    client, meth, tgt, _, why = lines[0]
    assert client.startswith("127.0.0.1:"), lines
    assert meth == method and tgt == target, lines
    for r in reason:
        assert r in why, (r, why)
    return why


def test_400_malformed_request(muxd):
    m = muxd(NO_INTERCEPT)
    resp = ask(m, b"GET http://example.test/ HTTP/1.1\nHost: example.test\n\n")
    assert resp.status == 400, resp
    assert b"not a valid HTTP/1.1 request head" in resp.body
    one_refusal(m, 400, "-", "-", "malformed request")


def test_400_bad_target_names_absolute_uri(muxd):
    m = muxd(NO_INTERCEPT)
    resp = ask(m, b"GET example.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert resp.status == 400, resp
    assert b"absolute URI" in resp.body, resp.body
    one_refusal(m, 400, "GET", "example.test/x", "bad request target")


def test_403_connect_port_names_connect_ports(muxd):
    m = muxd(NO_INTERCEPT)
    resp, reader = open_tunnel(m.port, "127.0.0.1:8443")
    reader.sock.close()
    assert resp.status == 403, resp
    want = "muxd: CONNECT to port 8443 refused: port not in connect_ports (443) \u2014 see muxd.conf(5)"
    assert resp.body.decode().strip() == want, resp.body
    assert resp.headers.get("content-type") == "text/plain; charset=utf-8", resp.headers
    one_refusal(m, 403, "CONNECT", "127.0.0.1:8443", "connect_ports (443)")


def test_403_client_outside_allow_names_client_and_key(muxd):
    m = muxd({"muxd": {"allow": "10.0.0.0/8"}, **NO_INTERCEPT})
    resp = ask(m, proxy_request("GET", "http://example.test/"))
    assert resp.status == 403, resp
    text = resp.body.decode()
    assert re.search(r"client 127\.0\.0\.1:\d+ refused: address not in allow", text), text
    assert "muxd.conf(5)" in text, text
    one_refusal(m, 403, "-", "-", "not in allow")


def test_408_names_request_header_timeout(muxd):
    m = muxd({"muxd": {"request_header_timeout": "1s"}, **NO_INTERCEPT})
    resp = ask(m, b"GET http://example.test/ HTTP/1.1\r\n")
    assert resp.status == 408, resp
    assert b"request_header_timeout (1s)" in resp.body, resp.body
    one_refusal(m, 408, "-", "-", "request_header_timeout")


def test_414_names_the_limit(muxd):
    m = muxd(NO_INTERCEPT)
    url = "http://example.test/?" + "a" * (16 * 1024)
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 414, resp
    assert b"request target too long (over 16384 bytes)" in resp.body, resp.body
    why = one_refusal(m, 414, "GET", url[:250] + "...", "too long")
    assert "16384" in why


def test_431_names_the_limit(muxd):
    m = muxd(NO_INTERCEPT)
    head = proxy_request("GET", "http://example.test/", headers=[("X-Pad", "p" * 70000)])
    resp = ask(m, head)
    assert resp.status == 431, resp
    assert b"request head too large (over 65536 bytes)" in resp.body, resp.body
    one_refusal(m, 431, "-", "-", "too large")


def test_502_cannot_connect(muxd):
    m = muxd({"pool": {"connect_timeout": "2s"}, **NO_INTERCEPT})
    url = f"http://127.0.0.1:{closed_port()}/x"
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 502, resp
    one_refusal(m, 502, "GET", url, "cannot connect")


def test_502_tunnel_cannot_connect(muxd):
    port = closed_port()
    m = muxd({"muxd": {"connect_ports": f"443 {port}"}, **NO_INTERCEPT})
    resp, reader = open_tunnel(m.port, f"127.0.0.1:{port}")
    reader.sock.close()
    assert resp.status == 502, resp
    one_refusal(m, 502, "CONNECT", f"127.0.0.1:{port}", "cannot connect")
    assert "tunnel to" not in m.log()


def test_503_waiter_names_the_cap(muxd, origin):
    release = threading.Event()

    def held(req, conn):
        if req.path == "/hold":
            release.wait(30)
        conn.respond(200, body=b"done")

    o = origin(held)
    m = muxd({"pool": {"max_h1_per_origin": "1", "connect_timeout": "1s"}, **NO_INTERCEPT})
    first = []
    t = threading.Thread(
        target=lambda: first.append(ask(m, proxy_request("GET", o.url("/hold")), timeout=40))
    )
    t.start()
    try:
        wait_until(lambda: o.requests, timeout=10, what="the first request at the origin")
        resp = ask(m, proxy_request("GET", o.url("/second")))
        assert resp.status == 503, resp
        assert b"max_h1_per_origin" in resp.body, resp.body
        one_refusal(m, 503, "GET", o.url("/second"), "max_h1_per_origin")
    finally:
        release.set()
        t.join(30)


def test_504_mute_origin(muxd, stream_server):
    def mute(sock):
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    srv = stream_server(mute)
    m = muxd({"pool": {"response_timeout": "1s"}, **NO_INTERCEPT})
    url = f"http://127.0.0.1:{srv.port}/slow"
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 504, resp
    one_refusal(m, 504, "GET", url)


def test_508_via_names_the_token(muxd):
    m = muxd(NO_INTERCEPT)
    token = m.via_token()
    resp = ask(m, proxy_request("GET", "http://example.test/", headers=[("Via", token)]))
    assert resp.status == 508, resp
    assert b"loops back into muxd" in resp.body
    assert f"Via names this muxd ({token})".encode() in resp.body, resp.body
    one_refusal(m, 508, "GET", "http://example.test/", "Via names this muxd")


def test_508_own_address(muxd):
    m = muxd({"muxd": {"via": "off"}, **NO_INTERCEPT})
    url = f"http://127.0.0.1:{m.port}/x"
    resp = ask(m, proxy_request("GET", url))
    assert resp.status == 508, resp
    assert f"127.0.0.1:{m.port} is muxd's own listen address".encode() in resp.body, resp.body
    one_refusal(m, 508, "GET", url, "own listen address")


def test_flood_of_bad_requests_is_rate_limited(muxd):
    m = muxd(NO_INTERCEPT)
    for _ in range(200):
        resp = ask(m, b"\x00\r\n\r\n")
        assert resp.status == 400, resp
    logged = len(refusals(m, 400))
    assert 1 <= logged <= 40, logged

    # the lines held back are counted once the second is over
    def summary():
        ask(m, b"\x00\r\n\r\n")
        return re.findall(r"suppressed (\d+) similar lines \(status 400\)", m.log())

    counts = wait_until(summary, timeout=10, interval=0.3, what="a 'suppressed' line")
    assert sum(int(c) for c in counts) + len(refusals(m, 400)) >= 200
