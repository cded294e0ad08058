"""Honest framing (issue 18): every response muxd relays can be delimited by
its client, whatever the upstream protocol and the client's HTTP version.

* A response with no body carries ``Content-Length: 0`` (unless the status or
  the method forbids a body: 1xx, 204, 304, HEAD) -- including HTTP/2 and
  HTTP/3 answers that end with their HEADERS frame (a 302, an empty 200).
* A body of unknown length is chunked to HTTP/1.1 clients and
  close-delimited to HTTP/1.0 clients.
* ``Connection: Content-Length`` from an origin does not strip the framing.
* Trailers are filtered (RFC 9110 6.5.1) in both directions, and relayed
  chunked after a body of known length to a client that sent TE: trailers
  (else neither they nor the ``Trailer`` field go).
* Interim and final answers from HTTP/2 origins get standard reason phrases.
* ``Expect: 100-continue`` towards an HTTP/2 origin is answered by muxd as
  soon as the stream is open, and not forwarded.

Each response is read by its head first (with a short socket timeout), so
that an undelimited keep-alive response fails at once instead of hanging;
every keep-alive answer is followed by a second request on the same client
connection, which works only if the first was delimited.
"""

import socket
import ssl
import subprocess

import pytest

from support import (
    HTTPReader,
    clean_env,
    connect,
    pattern_bytes,
    proxy_request,
    sha256,
)

MB = 1024 * 1024
READ_TIMEOUT = 5.0


def conf(pki):
    return {"route *": {"ca_file": pki.ca_cert}}


def intercept_conf(pki, port):
    """curl's https:// requests to port go through muxd's interception."""
    return {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}


def request_bytes(method, url, version, headers=()):
    headers = list(headers)
    if version == "HTTP/1.0":
        headers.append(("Connection", "keep-alive"))
    return proxy_request(method, url, headers, version=version)


def read_framed(reader, method, version, expect, length=None):
    """Read one response whose framing must be `expect`: "empty"
    (Content-Length: 0), "length" (Content-Length: length), "chunked",
    "close" (no length, no chunking, the connection closes) or "none" (no
    body by status or method: no chunking).  Returns (status, headers, body)."""
    _, status, _, headers = reader.read_head()
    te = headers.tokens("transfer-encoding")
    cl = headers.get_all("content-length")
    conn = headers.tokens("connection")
    if expect == "empty":
        assert cl == ["0"] and not te, f"{status} with no body: want Content-Length: 0, got {headers}"
    elif expect == "length":
        assert cl == [str(length)] and not te, f"want Content-Length: {length}, got {headers}"
    elif expect == "chunked":
        assert version == "HTTP/1.1"
        assert te == ["chunked"] and not cl, f"want chunked, got {headers}"
    elif expect == "close":
        assert not te and not cl, f"HTTP/1.0 client, unknown length: want close-delimited, got {headers}"
        assert "close" in conn, headers
    elif expect == "none":
        assert not te, f"no body allowed, yet chunked: {headers}"
        if status == 204 or status < 200:
            assert not cl, f"{status} must not carry Content-Length: {headers}"
    if expect == "close":
        body = reader.read_to_eof()
    else:
        assert "close" not in conn, headers
        body = b"".join(reader.iter_body(headers, status, method))
    return status, headers, body


def run_case(m, url, method, version, expect, length=None, want_status=None, want_body=None):
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        reader = HTTPReader(s)
        for attempt in range(2 if expect != "close" else 1):
            s.sendall(request_bytes(method, url, version))
            try:
                status, headers, body = read_framed(reader, method, version, expect, length)
            except socket.timeout:
                pytest.fail(f"response {attempt + 1} could not be delimited: no answer within {READ_TIMEOUT}s")
            if want_status is not None:
                assert status == want_status, (status, headers)
            if want_body is not None:
                assert body == want_body, body[:200]
        if expect == "close":
            assert reader.wait_eof(READ_TIMEOUT), "close-delimited body, yet the connection stayed open"
    finally:
        s.close()


VERSIONS = ["HTTP/1.1", "HTTP/1.0"]


# --------------------------------------------------------------------------
# HTTP/1.1 origin (scripted)


def h1_raw(data, close=False):
    def handler(req, conn):
        conn.send(data)
        if close:
            conn.close()
    return handler


# (id, method, handler, status, expect for HTTP/1.1, expect for HTTP/1.0, length, body)
H1_CASES = [
    ("302-length-0", "GET", h1_raw(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"),
     302, "empty", "empty", None, b""),
    ("200-close-delimited", "GET", h1_raw(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello", close=True),
     200, "chunked", "close", None, b"hello"),
    ("200-length", "GET", h1_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
     200, "length", "length", 5, b"hello"),
    ("200-chunked", "GET", h1_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
     200, "chunked", "close", None, b"hello"),
    ("connection-names-content-length", "GET",
     h1_raw(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"),
     200, "length", "length", 5, b"hello"),
    ("connection-names-content-length-empty", "GET",
     h1_raw(b"HTTP/1.1 404 Not Found\r\nConnection: content-length, x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n"),
     404, "empty", "empty", None, b""),
    ("connection-names-transfer-encoding", "GET",
     h1_raw(b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"),
     200, "chunked", "close", None, b"hello"),
    ("head", "HEAD", h1_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), 200, "none", "none", None, b""),
    ("204", "GET", h1_raw(b"HTTP/1.1 204 No Content\r\n\r\n"), 204, "none", "none", None, b""),
    ("304", "GET", h1_raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), 304, "none", "none", None, b""),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", H1_CASES, ids=[c[0] for c in H1_CASES])
def test_h1_upstream_framing(muxd, origin, case, version):
    _, method, handler, status, expect11, expect10, length, body = case
    o = origin(handler)
    m = muxd()
    expect = expect11 if version == "HTTP/1.1" else expect10
    run_case(m, o.url("/f"), method, version, expect, length, status, body)


def test_connection_content_length_head_keeps_length(muxd, origin):
    """A HEAD answer's Content-Length passes even when Connection names it."""
    o = origin(h1_raw(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 7\r\n\r\n"))
    m = muxd()
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(request_bytes("HEAD", o.url("/h"), "HTTP/1.1"))
        _, status, _, headers = HTTPReader(s).read_head()
        assert status == 200 and headers.get_all("content-length") == ["7"], headers
    finally:
        s.close()


# --------------------------------------------------------------------------
# HTTP/2 origin (scripted): END_STREAM on HEADERS


def h2_end_on_headers(status, headers=()):
    return lambda req: req.send_head(status, list(headers), end_stream=True)


def h2_unknown_length(body):
    def handler(req):
        req.send_head(200, [("content-type", "text/plain")])
        req.send_data(body, end_stream=True)
    return handler


H2_CASES = [
    ("302-end-on-headers", "GET", h2_end_on_headers(302, [("location", "/x")]), 302, "empty", "empty", None, b""),
    ("200-end-on-headers", "GET", h2_end_on_headers(200), 200, "empty", "empty", None, b""),
    ("404-end-on-headers", "GET", h2_end_on_headers(404), 404, "empty", "empty", None, b""),
    ("200-unknown-length", "GET", h2_unknown_length(b"hello"), 200, "chunked", "close", None, b"hello"),
    ("200-empty-data-frame", "GET", h2_unknown_length(b""), 200, "chunked", "close", None, b""),
    ("200-length", "GET", lambda req: req.respond(200, [], b"hello"), 200, "length", "length", 5, b"hello"),
    ("head", "HEAD", h2_end_on_headers(200, [("content-length", "5")]), 200, "none", "none", None, b""),
    ("204", "GET", h2_end_on_headers(204), 204, "none", "none", None, b""),
    ("304", "GET", h2_end_on_headers(304, [("etag", '"x"')]), 304, "none", "none", None, b""),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", H2_CASES, ids=[c[0] for c in H2_CASES])
def test_h2_upstream_framing(muxd, h2_origin, pki, case, version):
    _, method, handler, status, expect11, expect10, length, body = case
    o = h2_origin(handler)
    m = muxd(conf(pki))
    expect = expect11 if version == "HTTP/1.1" else expect10
    run_case(m, o.url("/f"), method, version, expect, length, status, body)
    assert not o.errors, o.errors


def test_h2_redirect_followed_by_curl(muxd, h2_origin, pki):
    """The issue's symptom: curl -L through muxd to an HTTP/2 origin whose
    302 ends with its HEADERS frame."""
    def handler(req):
        if req.path == "/start":
            req.send_head(302, [("location", "/end")], end_stream=True)
        else:
            req.respond(200, [], b"arrived\n")

    o = h2_origin(handler)
    m = muxd(intercept_conf(pki, o.port))
    out = subprocess.run(["curl", "-sS", "-L", "--max-time", "10", "--noproxy", "", "-x", m.proxy_url(),
                          "--cacert", str(m.state_dir / "ca.pem"), o.url("/start")],
                         capture_output=True, env=clean_env(), timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"arrived\n"


# --------------------------------------------------------------------------
# reason phrases from HTTP/2 origins


def test_h2_reason_phrases(muxd, h2_origin, pki):
    def handler(req):
        req.send_head(103, [("link", "</s.css>; rel=preload")])
        req.respond(201, [], b"made")

    o = h2_origin(handler)
    m = muxd(conf(pki))
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(request_bytes("GET", o.url("/r"), "HTTP/1.1"))
        r = HTTPReader(s).read_response()
    finally:
        s.close()
    assert [(i.status, i.reason) for i in r.interim] == [(103, "Early Hints")], r.interim
    assert (r.status, r.reason, r.body) == (201, "Created", b"made")


# --------------------------------------------------------------------------
# trailers: filtered both ways, and after a body of known length

BAD_TRAILERS = [
    ("set-cookie", "a=b"),
    ("authorization", "Basic eDp5"),
    ("content-type", "text/evil"),
    ("location", "/elsewhere"),
    ("cache-control", "no-store"),
    ("www-authenticate", "Basic"),
]


def assert_filtered(trailers):
    names = {n.lower() for n, _ in trailers}
    assert "x-checksum" in names, trailers
    bad = names & ({n for n, _ in BAD_TRAILERS} | {"content-length", "host", "transfer-encoding"})
    assert not bad, f"trailer fields RFC 9110 6.5.1 forbids were relayed: {sorted(bad)} in {trailers}"


def test_h2_response_trailers_filtered(muxd, h2_origin, pki):
    def handler(req):
        req.send_head(200, [("content-type", "text/plain")])
        req.send_data(b"body")
        req.send_trailers([("x-checksum", "abc")] + BAD_TRAILERS)

    o = h2_origin(handler)
    m = muxd(conf(pki))
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(request_bytes("GET", o.url("/t"), "HTTP/1.1", [("TE", "trailers")]))
        r = HTTPReader(s).read_response()
    finally:
        s.close()
    assert r.body == b"body"
    assert_filtered(r.trailers.items)
    assert r.trailers.get("x-checksum") == "abc"


def test_h1_response_trailers_filtered(muxd, origin):
    trailers = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in
                        [("X-Checksum", "abc"), ("Content-Length", "99"), ("Host", "evil")] + BAD_TRAILERS)
    o = origin(h1_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                      b"4\r\nbody\r\n0\r\n" + trailers + b"\r\n"))
    m = muxd()
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(request_bytes("GET", o.url("/t"), "HTTP/1.1", [("TE", "trailers")]))
        r = HTTPReader(s).read_response()
    finally:
        s.close()
    assert r.body == b"body"
    assert_filtered(r.trailers.items)


def chunked_upload(url, trailers):
    head = proxy_request("POST", url, [("Transfer-Encoding", "chunked")])
    tail = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in trailers)
    return head + b"4\r\ndata\r\n0\r\n" + tail + b"\r\n"


REQUEST_TRAILERS = [("X-Checksum", "abc"), ("Host", "evil.example"), ("Content-Length", "99")] + BAD_TRAILERS


def test_request_trailers_filtered_to_h2(muxd, h2_origin, pki):
    o = h2_origin(lambda req: req.respond(200, [], b"ok"))
    m = muxd(conf(pki))
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(chunked_upload(o.url("/up"), REQUEST_TRAILERS))
        r = HTTPReader(s).read_response()
    finally:
        s.close()
    assert r.status == 200, r
    assert len(o.requests) == 1 and o.requests[0].body == b"data"
    assert_filtered(o.requests[0].trailers)


def test_request_trailers_filtered_to_h1(muxd, origin):
    o = origin()
    m = muxd()
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(chunked_upload(o.url("/up"), REQUEST_TRAILERS))
        r = HTTPReader(s).read_response()
    finally:
        s.close()
    assert r.status == 200, r
    assert len(o.requests) == 1 and o.requests[0].body == b"data"
    assert_filtered(o.requests[0].trailers)


def length_with_trailers(body):
    def handler(req):
        req.respond(200, [("trailer", "x-checksum")], body, trailers=[("x-checksum", sha256(body))])
    return handler


@pytest.mark.parametrize("version,te", [("HTTP/1.1", True), ("HTTP/1.1", False), ("HTTP/1.0", True)],
                         ids=["http11-te-trailers", "http11-no-te", "http10-te-trailers"])
def test_trailers_after_content_length(muxd, h2_origin, pki, version, te):
    """An HTTP/2 answer with content-length, a Trailer field and trailers:
    an HTTP/1.1 client that sent TE: trailers gets the body chunked with the
    trailers; any other client gets the length, and neither the trailers nor
    the Trailer field announcing them."""
    body = pattern_bytes(70000, seed=18)
    o = h2_origin(length_with_trailers(body))
    m = muxd(conf(pki))
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(request_bytes("GET", o.url("/t"), version, [("TE", "trailers")] if te else []))
        reader = HTTPReader(s)
        r = reader.read_response()
    finally:
        s.close()
    assert r.body == body
    if version == "HTTP/1.1" and te:
        assert r.headers.tokens("transfer-encoding") == ["chunked"], r.headers
        assert "content-length" not in r.headers, r.headers
        assert r.headers.get("trailer") == "x-checksum", r.headers
        assert r.trailers.get("x-checksum") == sha256(body), r.trailers
    else:
        assert r.headers.get_all("content-length") == [str(len(body))], r.headers
        assert "trailer" not in r.headers, f"Trailer announced, but trailers cannot follow: {r.headers}"


# --------------------------------------------------------------------------
# Expect: 100-continue towards HTTP/2


def test_expect_continue_answered_for_h2(muxd, h2_origin, pki):
    """The client sends its head with Expect: 100-continue and waits for the
    100 before sending a 2 MiB body.  The scripted origin never sends 100 (it
    sees the request only once the body ended), so only muxd can answer."""
    body = pattern_bytes(2 * MB + 17, seed=12)
    o = h2_origin(lambda req: req.respond(200, [], f"{len(req.body)} {sha256(req.body)}"))
    m = muxd(conf(pki))
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(proxy_request("PUT", o.url("/up"), [("Expect", "100-continue"),
                                                      ("Content-Length", str(len(body)))]))
        reader = HTTPReader(s)
        try:
            _, status, reason, _ = reader.read_head()
        except socket.timeout:
            pytest.fail(f"no 100 Continue within {READ_TIMEOUT}s of sending the head")
        assert (status, reason) == (100, "Continue")
        s.sendall(body)
        r = reader.read_response()
    finally:
        s.close()
    assert r.status == 200, r
    assert r.body.decode() == f"{len(body)} {sha256(body)}"
    assert not r.interim, f"a second 100 after muxd's own: {r.interim}"
    assert len(o.requests) == 1
    assert o.requests[0].header("expect") is None, "Expect forwarded to the HTTP/2 origin"


def test_expect_continue_curl_upload_h2(muxd, h2_origin, pki, tmp_path):
    """curl -T of a 2 MiB file: curl reports the 100 it got from muxd (its
    own 1 s wait would end without one). HTTP/1.1 to muxd: curl sends no
    Expect over HTTP/2 (test_client_h2.py covers that client side)."""
    data = pattern_bytes(2 * MB, seed=3)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    o = h2_origin(lambda req: req.respond(200, [], sha256(req.body)))
    m = muxd(intercept_conf(pki, o.port))
    out = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", "--noproxy", "", "-x", m.proxy_url(),
                          "--cacert", str(m.state_dir / "ca.pem"), "--http1.1", "-T", str(f), o.url("/up")],
                         capture_output=True, env=clean_env(), timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode() == sha256(data)
    assert b"< HTTP/1.1 100 Continue" in out.stderr, out.stderr.decode(errors="replace")[-2000:]


def test_expect_continue_h1_origin_answers_itself(muxd, origin):
    """Towards HTTP/1.1 muxd leaves Expect to the origin: one 100, the origin's."""
    o = origin()
    m = muxd()
    body = b"x" * 1000
    s = connect(m.port, timeout=READ_TIMEOUT)
    try:
        s.sendall(proxy_request("PUT", o.url("/up"), [("Expect", "100-continue"),
                                                      ("Content-Length", str(len(body)))]))
        reader = HTTPReader(s)
        _, status, _, _ = reader.read_head()
        assert status == 100
        s.sendall(body)
        r = reader.read_response()
    finally:
        s.close()
    assert r.status == 200 and not r.interim, r
    assert o.requests[0].sent_continue
    assert o.requests[0].headers.get("expect") == "100-continue"


# --------------------------------------------------------------------------
# HTTP/3 origin (gtlsserver, reached once nginx advertised it by Alt-Svc).
# gtlsserver cannot be scripted: it answers files with their length, so this
# covers what it can do (files, HEAD, a missing file, an upload with Expect;
# it cannot serve an empty file); END_STREAM on the head is the unit tests' job
# (tests/unit/test_framing.c: the head HTTP/2 and HTTP/3 share).


def h3_origin(tls_nginx_factory, h3_server):
    q = h3_server()
    (q.root / "which").write_text("quic\n")
    (q.root / "hello").write_bytes(b"hello")
    ng = tls_nginx_factory(http2=True, extra=f"add_header Alt-Svc 'h3=\":{q.port}\"; ma=3600' always;\n")
    (ng.root / "which").write_text("tcp\n")
    return ng, q


class Intercepted:
    """A client connection through muxd's interception to
    https://localhost:PORT, speaking HTTP/1.x in origin form."""

    def __init__(self, m, port):
        self.port = port
        self.sock = connect(m.port, timeout=READ_TIMEOUT)
        self.sock.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        _, status, _, _ = HTTPReader(self.sock).read_head()
        assert status == 200
        ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.reader = HTTPReader(self.sock)

    def send(self, method, path, version, headers=()):
        lines = [f"{method} {path} {version}", f"Host: localhost:{self.port}"]
        lines += [f"{n}: {v}" for n, v in headers]
        if version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def close(self):
        self.sock.close()


def h3_learned(m, ng):
    c = Intercepted(m, ng.port)
    try:
        c.send("GET", "/which", "HTTP/1.1")
        assert c.reader.read_response().body == b"tcp\n"
        c.send("GET", "/which", "HTTP/1.1")
        assert c.reader.read_response().body == b"quic\n", "the second request did not go over HTTP/3"
    finally:
        c.close()


# (path, method, expect, length, body)
H3_CASES = [
    ("/hello", "GET", "length", 5, b"hello"),
    ("/hello", "HEAD", "none", None, b""),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_h3_upstream_framing(muxd, tls_nginx_factory, h3_server, pki, version):
    ng, q = h3_origin(tls_nginx_factory, h3_server)
    m = muxd({"intercept": {"ports": ng.port}, "route *": {"ca_file": pki.ca_cert}})
    h3_learned(m, ng)
    c = Intercepted(m, ng.port)
    try:
        for path, method, expect, length, body in H3_CASES:
            for _ in range(2):  # the second one proves the first was delimited
                c.send(method, path, version)
                status, headers, got = read_framed(c.reader, method, version, expect, length)
                assert (status, got) == (200, body), (path, method, status, headers, got)
        c.send("GET", "/missing", version)
        _, status, _, headers = c.reader.read_head()
        assert status == 404
        assert headers.get_all("content-length") or headers.tokens("transfer-encoding") == ["chunked"] or (
            version == "HTTP/1.0" and "close" in headers.tokens("connection")), headers
    finally:
        c.close()
    assert m.metrics().sum("muxd_requests_total", proto="h3") >= 1 + 2 * len(H3_CASES)


def test_expect_continue_answered_for_h3(muxd, tls_nginx_factory, h3_server, pki):
    ng, q = h3_origin(tls_nginx_factory, h3_server)
    m = muxd({"intercept": {"ports": ng.port}, "route *": {"ca_file": pki.ca_cert}})
    h3_learned(m, ng)
    body = pattern_bytes(2 * MB, seed=7)
    c = Intercepted(m, ng.port)
    try:
        c.send("PUT", "/hello", "HTTP/1.1", [("Expect", "100-continue"), ("Content-Length", str(len(body)))])
        try:
            _, status, reason, _ = c.reader.read_head()
        except socket.timeout:
            pytest.fail(f"no 100 Continue within {READ_TIMEOUT}s of sending the head")
        assert (status, reason) == (100, "Continue")
        c.sock.sendall(body)
        r = c.reader.read_response()
    finally:
        c.close()
    assert r.status == 200 and not r.interim, r
    assert m.metrics().sum("muxd_requests_total", proto="h3") == 2
