"""Message framing edge cases in every client/upstream pairing (issue 14,
item 6): Expect: 100-continue, HEAD, 204, 304, origins that say
``Connection: close`` (for HTTP/2 the analogue: a GOAWAY right after the
response), and responses delimited by the close of the connection (HTTP/1.1
only).  After every case the client connection must still be usable as its
framing says: a follow-up request on it (or on a new one when muxd said
``Connection: close``) gets a whole, correct answer.

Clients (``CLIENTS``, each a class with ``request()`` and ``close()``):

* ``absolute``    HTTP/1.1 to muxd in plain text, absolute-form targets
                  (``http://`` to an HTTP/1.1 origin, ``https://`` to a TLS one);
* ``intercepted`` HTTP/1.1 inside TLS intercepted by muxd (CONNECT, then
                  origin-form requests);
* ``h2``          HTTP/2 inside TLS intercepted by muxd (ALPN h2; python-h2,
                  h2client.py, since curl sends no Expect over HTTP/2): one
                  stream per request, on one client connection as long as
                  muxd does not send GOAWAY.  HTTP/2 has no Connection
                  header and no close-delimited bodies: every response must
                  end with END_STREAM and carry no hop-by-hop field.

Upstreams (``UPSTREAMS``, each a factory returning an object with
``.authority``, ``.scheme_for(client)``, ``.conf`` and ``.supports(case)``):

* ``h1``  a python HTTP/1.1 origin (support.Origin; over TLS for
          intercepted clients);
* ``h2``  python-h2 (h2origin.H2Origin);
* ``h3``  h3origin (tests/h3origin/h3origin.c, response files) behind an
          nginx that advertises it with Alt-Svc; HTTP/3 has no close cases.
"""

import hashlib
import json
import socket
import ssl

import pytest

from h2client import H2TunnelClient
from h2origin import H2Origin
from support import (
    LOCALHOST,
    Headers,
    HTTPReader,
    Origin,
    OriginRequest,
    connect,
    wait_until,
)

TIMEOUT = 10.0
BODY = b"pairing body\n" * 100  # what /ok answers
UPLOAD = bytes(range(256)) * 64  # 16 KiB, sent after the 100


class Result:
    def __init__(self, status, headers, body, interim):
        self.status, self.headers, self.body, self.interim = status, headers, body, interim

    @property
    def keep_alive(self):
        return "close" not in self.headers.tokens("connection")

    def __repr__(self):
        return f"<{self.status} {self.headers!r} {self.body[:80]!r} interim={self.interim}>"


# --------------------------------------------------------------------------
# clients


class H1Client:
    """HTTP/1.1 to muxd; subclasses say how the connection is opened and what
    the request target looks like."""

    def __init__(self, m, scheme, authority):
        self.m, self.scheme, self.authority = m, scheme, authority
        self.sock = None

    def _open(self):
        raise NotImplementedError

    def _target(self, path):
        raise NotImplementedError

    def request(self, method, path, headers=(), body=None, expect_continue=False):
        """One request/response; opens a connection when none is open, and
        closes it after a response that says so (or that EOF delimits)."""
        if self.sock is None:
            self.sock = self._open()
            self.sock.settimeout(TIMEOUT)
            self.reader = HTTPReader(self.sock)
        lines = [f"{method} {self._target(path)} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{n}: {v}" for n, v in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        if expect_continue:
            lines.append("Expect: 100-continue")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        interim = []
        if expect_continue:
            try:
                version, status, reason, hdrs = self.reader.read_head()
            except socket.timeout:
                pytest.fail(f"no 100 Continue (nor a final answer) within {TIMEOUT}s")
            if status == 100:
                interim.append(status)
            else:  # a final answer without the body: hand it back as it is
                resp_body = b"".join(self.reader.iter_body(hdrs, status, method))
                return self._done(Result(status, hdrs, resp_body, interim))
        if body is not None:
            self.sock.sendall(body)
        while True:
            version, status, reason, hdrs = self.reader.read_head()
            if 100 <= status < 200:
                interim.append(status)
                continue
            break
        framed = method == "HEAD" or status in (204, 304) or "content-length" in hdrs or \
            "transfer-encoding" in hdrs
        resp_body = b"".join(self.reader.iter_body(hdrs, status, method))
        res = Result(status, hdrs, resp_body, interim)
        if not framed:
            res.headers = hdrs
            self.close()  # delimited by EOF: the connection is over
        return self._done(res)

    def _done(self, res):
        if not res.keep_alive:
            self.close()
        return res

    @property
    def connected(self):
        """Whether the next request goes on the connection in use."""
        return self.sock is not None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class AbsoluteClient(H1Client):
    def _open(self):
        return connect(self.m.port, TIMEOUT)

    def _target(self, path):
        return f"{self.scheme}://{self.authority}{path}"


class InterceptedClient(H1Client):
    def _open(self):
        s = connect(self.m.port, TIMEOUT)
        s.sendall(f"CONNECT {self.authority} HTTP/1.1\r\nHost: {self.authority}\r\n\r\n".encode())
        r = HTTPReader(s)
        version, status, reason, hdrs = r.read_head()
        assert status == 200, (status, reason)
        assert not r.buf
        ctx = ssl.create_default_context(cafile=str(self.m.state_dir / "ca.pem"))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx.wrap_socket(s, server_hostname=self.authority.rsplit(":", 1)[0])

    def _target(self, path):
        return path


class H2Client:
    """HTTP/2 to muxd inside its interception, one stream per request."""

    def __init__(self, m, scheme, authority):
        self.m, self.scheme, self.authority = m, scheme, authority
        self.sock = None  # the H2TunnelClient (named as the HTTP/1.1 clients' socket)

    def request(self, method, path, headers=(), body=None, expect_continue=False):
        c = self.sock
        if c is None or c.closed or c.goaway is not None:
            self.close()
            c = self.sock = H2TunnelClient(self.m, self.authority, timeout=TIMEOUT)
        fields = [(n.lower(), v) for n, v in headers]
        if body is not None:
            fields.append(("content-length", str(len(body))))
        if expect_continue:
            fields.append(("expect", "100-continue"))
        st = c.send_request(method, path, fields, end_stream=body is None)
        if expect_continue:
            c.until(lambda: st.interim or st.status is not None or st.done,
                    what="a 100 Continue (or a final answer)")
            if not st.interim:  # a final answer without the body
                c.until(lambda: st.done, what="the response")
                return self._result(st)
        if body is not None:
            c.send_body(st, body)
        c.until(lambda: st.done, what=f"the response to {method} {path}")
        return self._result(st)

    @property
    def connected(self):
        """Whether the next request goes on the connection in use (no GOAWAY)."""
        c = self.sock
        return c is not None and not c.closed and c.goaway is None

    @staticmethod
    def _result(st):
        # after a complete response a server may reset the stream with
        # NO_ERROR to stop an upload it does not want (RFC 9113 8.1)
        assert st.reset is None or (st.reset == 0 and st.ended), f"stream reset ({st.reset}): {st!r}"
        assert st.ended and st.status is not None, st
        for name in ("connection", "keep-alive", "transfer-encoding", "upgrade"):
            assert name not in st.headers, f"hop-by-hop {name} in an HTTP/2 response: {st!r}"
        return Result(st.status, st.headers, st.body, st.interim)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


CLIENTS = {"absolute": AbsoluteClient, "intercepted": InterceptedClient, "h2": H2Client}


# --------------------------------------------------------------------------
# upstreams

CASES = ["expect_continue", "expect_refused", "head", "head_chunked", "204", "304", "connection_close", "close_delimited"]


def upload_answer(body):
    return json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()


def h1_handler(req, conn):
    path = req.target.split("?")[0].split("/", 3)[-1] if req.target.startswith("http") else req.target
    path = "/" + path.lstrip("/")
    if path == "/upload":
        conn.respond(200, [("Content-Type", "application/json")], upload_answer(req.body))
    elif path == "/refuse":  # before the body, which is never read
        conn.respond(403, [("Connection", "close"), ("Content-Type", "text/plain")], b"no upload\n")
        conn.close()
    elif path == "/ok" and req.method == "HEAD":
        conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nContent-Type: text/plain\r\n\r\n".encode())
    elif path == "/chunked" and req.method == "HEAD":  # what a GET would get: chunked
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Case: head_chunked\r\n\r\n")
    elif path == "/ok":
        conn.respond(200, [("Content-Type", "text/plain")], BODY)
    elif path == "/204":
        conn.send(b"HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\n")
    elif path == "/304":
        # Content-Length is the representation's (RFC 9110 8.6), not a body
        conn.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1300\r\nX-Case: 304\r\n\r\n')
    elif path == "/close":
        conn.respond(200, [("Connection", "close"), ("Content-Type", "text/plain")], BODY)
        conn.close()
    elif path == "/eof":
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + BODY)
        conn.close()
    else:
        conn.respond(404, [], b"no such case\n")


class PairingOrigin(Origin):
    """support.Origin, except that a request for /refuse is handed to the
    handler as soon as its head is in: no 100 Continue, its body unread (an
    origin that refuses an upload before it starts)."""

    def _read_request(self, rfile, conn, conn_id, index):
        line = rfile.readline(70000)
        if not line:
            return None
        if b" /refuse " not in line and b"/refuse HTTP/" not in line:
            return self._read_rest(line, rfile, conn, conn_id, index)
        headers = []
        while (h := rfile.readline(200000)) not in (b"\r\n", b""):
            name, _, value = h.rstrip(b"\r\n").partition(b":")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        method, target, version = line.decode("latin-1").split()
        req = OriginRequest(conn_id, index, method, target, version, Headers(headers))
        return req

    def _read_rest(self, line, rfile, conn, conn_id, index):
        """support.Origin's reading, given the request line already read."""
        class Replay:
            def __init__(self):
                self.first = line

            def readline(self, n=-1):
                if self.first is not None:
                    out, self.first = self.first, None
                    return out
                return rfile.readline(n)

            def read(self, n=-1):
                return rfile.read(n)

        return Origin._read_request(self, Replay(), conn, conn_id, index)


class TLSOrigin(PairingOrigin):
    """PairingOrigin behind TLS (the test PKI's leaf, ALPN http/1.1)."""

    def __init__(self, pki, handler):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
        self.ctx.set_alpn_protocols(["http/1.1"])
        super().__init__(handler)

    def _serve(self, sock):
        try:
            sock.settimeout(TIMEOUT)
            tls = self.ctx.wrap_socket(sock, server_side=True)
            tls.settimeout(None)
        except (OSError, ssl.SSLError):
            sock.close()
            return
        super()._serve(tls)


class H1Upstream:
    proto = "h1"

    def __init__(self, client, pki, **_):
        tls = client != "absolute"
        self.origin = TLSOrigin(pki, h1_handler) if tls else PairingOrigin(h1_handler)
        self.scheme = "https" if tls else "http"
        host = "localhost" if tls else LOCALHOST
        self.authority = f"{host}:{self.origin.port}"
        self.port = self.origin.port

    def supports(self, case):
        return None

    def upstream_connections(self):
        return self.origin.connections

    def stop(self):
        self.origin.stop()


def h2_handler(req):
    path = req.path
    if path == "/upload":
        req.respond(200, [("content-type", "application/json")], upload_answer(req.body))
    elif path == "/ok" and req.method == "HEAD":
        req.send_head(200, [("content-length", str(len(BODY))), ("content-type", "text/plain")], end_stream=True)
    elif path == "/ok":
        req.respond(200, [("content-type", "text/plain")], BODY)
    elif path == "/chunked" and req.method == "HEAD":  # no length: what a streamed GET would get
        req.send_head(200, [("x-case", "head_chunked")], end_stream=True)
    elif path == "/204":
        req.send_head(204, [("x-case", "204")], end_stream=True)
    elif path == "/304":
        req.send_head(304, [("etag", '"v1"'), ("content-length", "1300"), ("x-case", "304")], end_stream=True)
    elif path == "/close":
        # HTTP/2 has no Connection: close; its analogue is a GOAWAY, sent
        # before the response ends so that muxd knows of it when the client
        # sends its next request (a GOAWAY after the response would race it)
        req.send_head(200, [("content-type", "text/plain"), ("content-length", str(len(BODY)))])
        req.conn.goaway(last_stream_id=req.stream_id)
        req.send_data(BODY, end_stream=True)
    else:
        req.respond(404, [], b"no such case\n")


class H2Upstream:
    proto = "h2"

    def __init__(self, client, pki, **_):
        self.origin = H2Origin(pki, h2_handler)
        self.scheme = "https"
        self.authority = f"localhost:{self.origin.port}"
        self.port = self.origin.port

    def supports(self, case):
        if case == "close_delimited":
            return "HTTP/2 has no close-delimited responses"
        if case == "expect_refused":
            return "muxd answers 100 itself for HTTP/2 (and h2origin answers only whole requests)"
        return None

    def upstream_connections(self):
        return self.origin.connections

    def stop(self):
        self.origin.stop()


class H3Upstream:
    """h3origin (tests/h3origin/h3origin.c) on UDP, advertised by an HTTP/2
    nginx (Alt-Svc h3=":UDPPORT"); the first request learns the Alt-Svc,
    then /which must come from h3origin ("ok").  h3origin answers from
    response files (body and head); it answers after the whole request
    body, with a 100 first when asked to."""

    proto = "h3"

    def __init__(self, client, pki, tls_nginx_factory=None, h3_origin=None):
        self.q = h3_origin()
        self.ng = tls_nginx_factory(http2=True, extra=f"add_header Alt-Svc 'h3=\":{self.q.port}\"; ma=3600' always;\n")
        (self.ng.root / "which").write_text("tcp\n")
        r = self.q.root
        (r / "ok").write_bytes(BODY)
        (r / "upload").write_bytes(BODY)
        (r / "chunked.head").write_text("200\nx-case: head_chunked\n")
        (r / "204.head").write_text("204\nx-case: 204\n")
        (r / "304.head").write_text('304\netag: "v1"\ncontent-length: 1300\nx-case: 304\n')
        self.scheme = "https"
        self.authority = f"localhost:{self.ng.port}"
        self.port = self.ng.port

    def supports(self, case):
        if case in ("connection_close", "close_delimited"):
            return "HTTP/3 has no Connection: close or close-delimited responses (h3origin sends no GOAWAY)"
        if case == "expect_refused":
            return "h3origin answers only whole requests"
        return None

    def prime(self, client):
        """Learn the Alt-Svc over TCP, then wait until requests go over QUIC."""
        def over_quic():
            r = client.request("GET", "/which")
            return r.status == 200 and r.body == b"ok"
        wait_until(over_quic, timeout=TIMEOUT, interval=0.1, what="requests over HTTP/3")

    def stop(self):
        pass  # the fixtures stop nginx and h3origin


UPSTREAMS = {"h1": H1Upstream, "h2": H2Upstream, "h3": H3Upstream}


# --------------------------------------------------------------------------
# the matrix


@pytest.fixture
def pairing(request, muxd, pki):
    """(client, upstream, m) for the test's client and upstream parameters."""
    client_name, upstream_name = request.node.callspec.params["client"], request.node.callspec.params["upstream"]
    kw = {}
    if upstream_name == "h3":
        kw = {"tls_nginx_factory": request.getfixturevalue("tls_nginx_factory"),
              "h3_origin": request.getfixturevalue("h3_origin")}
    up = UPSTREAMS[upstream_name](client_name, pki, **kw)
    reason = up.supports(request.node.callspec.params["case"])
    if reason:
        up.stop()
        pytest.skip(reason)
    conf = {"route *": {"ca_file": pki.ca_cert}, "intercept": {"ports": up.port},
            "muxd": {"connect_ports": f"443 {up.port}"}}
    m = muxd(conf)
    client = CLIENTS[client_name](m, up.scheme, up.authority)
    if hasattr(up, "prime"):
        up.prime(client)
    yield client, up, m
    client.close()
    up.stop()


def requests_over(m, proto):
    return m.metrics().value("muxd_requests_total", proto=proto)


def check_followup(client, label):
    """The client connection (or a new one, when the last answer closed it)
    carries a whole next request."""
    r = client.request("GET", "/ok")
    assert r.status == 200, f"{label}: follow-up {r!r}"
    assert r.body == BODY, f"{label}: follow-up body {r.body[:100]!r}... ({len(r.body)} bytes)"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_pairing(pairing, client, upstream, case):
    c, up, m = pairing
    label = f"{client} client, {upstream} upstream, {case}"
    before = requests_over(m, up.proto)
    if case == "expect_continue":
        r = c.request("POST", "/upload", body=UPLOAD, expect_continue=True)
        assert r.interim == [100], f"{label}: interim answers {r.interim}, want one 100"
        assert r.status == 200, f"{label}: {r!r}"
        if upstream == "h3":  # h3origin answers with its response file
            assert r.body == BODY, f"{label}: {r.body[:100]!r}"
        else:
            assert json.loads(r.body) == json.loads(upload_answer(UPLOAD)), f"{label}: {r.body!r}"
    elif case == "expect_refused":
        r = c.request("POST", "/refuse", body=UPLOAD, expect_continue=True)
        assert r.interim == [], f"{label}: interim answers {r.interim}"
        assert r.status == 403, f"{label}: {r!r}"
        assert r.body == b"no upload\n"
        if client == "h2":
            # only the stream ends (RST_STREAM NO_ERROR); the connection goes on
            assert c.connected, f"{label}: the client connection ended"
        else:
            # muxd cannot tell whether the body follows (RFC 9110 10.1.1): it
            # says it closes, so the client neither sends it nor reuses the connection
            assert not r.keep_alive, f"{label}: a keep-alive answer before the body: {r!r}"
            assert not c.connected
    elif case == "head":
        r = c.request("HEAD", "/ok")
        assert r.status == 200, f"{label}: {r!r}"
        assert r.body == b""
        assert r.headers.get("content-length") == str(len(BODY)), f"{label}: {r!r}"
    elif case == "head_chunked":
        r = c.request("HEAD", "/chunked")
        assert r.status == 200, f"{label}: {r!r}"
        assert r.body == b""
        assert r.headers.get("x-case") == "head_chunked", f"{label}: {r!r}"
    elif case in ("204", "304"):
        r = c.request("GET", f"/{case}", headers=[("If-None-Match", '"v1"')] if case == "304" else ())
        assert r.status == int(case), f"{label}: {r!r}"
        assert r.body == b""
        assert r.headers.get("x-case") == case, f"{label}: {r!r}"
        assert "transfer-encoding" not in r.headers, f"{label}: {r!r}"
        if case == "204":
            assert "content-length" not in r.headers, f"{label}: {r!r}"
        else:
            assert r.headers.get("etag") == '"v1"', f"{label}: {r!r}"
            assert r.headers.get("content-length") in (None, "1300"), f"{label}: {r!r}"
    elif case == "connection_close":
        r = c.request("GET", "/close")
        assert r.status == 200, f"{label}: {r!r}"
        assert r.body == BODY
        # the origin's Connection: close is hop-by-hop: the client's connection goes on
        assert r.keep_alive, f"{label}: muxd passed the origin's close on: {r!r}"
        assert c.connected
        # the next request needs a fresh upstream connection, not the closed one
        check_followup(c, label)
        assert up.upstream_connections() == 2, f"{label}: {up.upstream_connections()} upstream connections"
        return
    elif case == "close_delimited":
        r = c.request("GET", "/eof")
        assert r.status == 200, f"{label}: {r!r}"
        assert r.body == BODY, f"{label}: {len(r.body)} bytes"
        # re-framed for the client (chunked; END_STREAM over HTTP/2) so its connection goes on
        assert client == "h2" or r.headers.tokens("transfer-encoding") == ["chunked"] or not r.keep_alive, \
            f"{label}: {r!r}"
    assert requests_over(m, up.proto) == before + 1, f"{label}: not served over {up.proto}"
    check_followup(c, label)
    if client == "h2":  # every request (priming included) was a stream of one client connection
        assert c.sock.goaway is None, f"{label}: muxd sent GOAWAY ({c.sock.goaway})"
        assert m.metrics().value("muxd_client_h2_sessions_total") == 1, f"{label}: more than one h2 session"
