"""Hop-by-hop fields (both directions), Via, loop detection (508), via = off."""

import re

import pytest

from support import HTTPReader, connect, proxy_request, raw_exchange


def forward(muxd_port, origin, headers):
    """Send one request with extra headers through muxd; return the headers
    the origin received."""
    resp, reader = raw_exchange(muxd_port, proxy_request("GET", origin.url("/h"), headers=headers))
    reader.sock.close()
    assert resp.status == 200, resp
    assert len(origin.requests) == 1
    return origin.requests[0].headers


# (id, request headers, names the origin must not see)
REQUEST_HOP_BY_HOP = [
    ("connection-and-named", [("Connection", "keep-alive, X-Hop-A, x-hop-b"), ("X-Hop-A", "1"), ("X-Hop-B", "2")],
     ["x-hop-a", "x-hop-b"]),
    ("keep-alive", [("Keep-Alive", "timeout=77, max=77")], ["keep-alive"]),
    ("proxy-connection", [("Proxy-Connection", "keep-alive")], ["proxy-connection"]),
    ("te-not-trailers", [("TE", "gzip, deflate;q=0.5")], ["te"]),
    ("upgrade", [("Upgrade", "example/1")], ["upgrade"]),
    ("proxy-authorization", [("Proxy-Authorization", "Basic dTpw")], ["proxy-authorization"]),
]


@pytest.mark.parametrize("headers,dropped", [c[1:] for c in REQUEST_HOP_BY_HOP], ids=[c[0] for c in REQUEST_HOP_BY_HOP])
def test_request_hop_by_hop_dropped(muxd, origin, headers, dropped):
    o = origin()
    m = muxd()
    seen = forward(m.port, o, headers + [("X-End-To-End", "kept")])
    assert seen.get("x-end-to-end") == "kept"
    for name in dropped:
        assert name not in seen, f"{name} forwarded: {seen}"
    # whatever Connection muxd sends upstream is its own, never the client's
    assert not {"x-hop-a", "x-hop-b"} & set(seen.tokens("connection")), seen


@pytest.mark.parametrize("te", ["trailers", "gzip, trailers", "trailers;q=1, deflate"], ids=["alone", "last", "first"])
def test_request_te_trailers_forwarded(muxd, origin, te):
    o = origin()
    m = muxd()
    seen = forward(m.port, o, [("TE", te)])
    assert seen.tokens("te") == ["trailers"], seen


def test_response_hop_by_hop_dropped(muxd, origin):
    def handler(req, conn):
        conn.respond(200, [
            ("Connection", "X-Resp-Hop"),
            ("X-Resp-Hop", "secret"),
            ("Keep-Alive", "timeout=77, max=77"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "example/1"),
            ("Proxy-Authenticate", 'Basic realm="upstream"'),
            ("X-End-To-End", "kept"),
        ], body=b"hello")

    o = origin(handler)
    m = muxd()
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/r")))
    reader.sock.close()
    assert resp.status == 200 and resp.body == b"hello"
    h = resp.headers
    assert h.get("x-end-to-end") == "kept"
    assert "x-resp-hop" not in h
    assert "x-resp-hop" not in h.tokens("connection")
    assert not any("77" in v for v in h.get_all("keep-alive")), h
    for name in ("proxy-connection", "te", "upgrade", "proxy-authenticate"):
        assert name not in h, f"{name} relayed: {h}"


def test_via_added_to_request_and_response(muxd, origin):
    o = origin()
    m = muxd()
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/v")))
    reader.sock.close()
    token = m.via_token()
    assert re.fullmatch(r"1\.1 muxd-[0-9a-f]{8}", token), token
    assert o.requests[0].headers.get_all("via") == [token]
    assert resp.headers.get("via") == token


def test_via_appended_to_existing(muxd, origin):
    o = origin(lambda req, conn: conn.respond(200, [("Via", "1.0 fred")], b"ok"))
    m = muxd()
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/v"), headers=[("Via", "1.1 other")]))
    reader.sock.close()
    assert o.requests[0].headers.get("via") == f"1.1 other, {m.via_token()}"
    assert resp.headers.get("via") == f"1.0 fred, {m.via_token()}"


@pytest.mark.parametrize("via", ["1.1 SELF", "1.0 fred, 1.1 SELF", "1.1 a, 1.1 SELF (muxd/0.1), 1.1 b", "HTTP/1.1 SELF"],
                         ids=["only", "last", "middle-with-comment", "protocol-name"])
def test_loop_detected_508(muxd, origin, via):
    o = origin()
    m = muxd()
    via = via.replace("SELF", m.via_token().split(" ", 1)[1])
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/loop"), headers=[("Via", via)]))
    reader.sock.close()
    assert resp.status == 508
    assert o.requests == []


def test_other_via_names_are_not_loops(muxd, origin):
    """Another muxd (its own token, or an old one's plain "muxd") is not this one."""
    o = origin()
    m = muxd()
    other = "1.1 notmuxd, 1.0 muxd.example, 1.1 muxd, 1.1 muxd-00000000"
    resp, reader = raw_exchange(m.port, proxy_request("GET", o.url("/x"), headers=[("Via", other)]))
    reader.sock.close()
    assert resp.status == 200
    assert o.requests[0].headers.get("via") == f"{other}, {m.via_token()}"


def test_via_off(muxd, origin):
    o = origin(lambda req, conn: conn.respond(200, [], b"ok"))
    m = muxd({"muxd": {"via": "off"}})
    with connect(m.port) as s:
        reader = HTTPReader(s)
        s.sendall(proxy_request("GET", o.url("/a")))
        plain = reader.read_response()
        s.sendall(proxy_request("GET", o.url("/b"), headers=[("Via", "1.1 other")]))
        with_via = reader.read_response()
    assert plain.status == 200 and "via" not in plain.headers
    assert "via" not in o.requests[0].headers
    assert with_via.status == 200
    assert o.requests[1].headers.get_all("via") == ["1.1 other"]
