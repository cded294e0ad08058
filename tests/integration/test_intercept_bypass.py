"""What an interceptable CONNECT turns into after muxd has peeked at the
client's first bytes: a TLS ClientHello offering HTTP (ALPN h2 or http/1.1,
or no ALPN at all) is intercepted; one that offers only other protocols
(acme-tls/1, a private protocol), one without SNI for a host name (unless the
route sets ``intercept_without_sni = on``), one whose SNI TLS refuses, non-TLS
bytes and silence are tunneled untouched to the origin, so that the client
sees the origin's own certificate.  Every such bypass is counted in
``muxd_intercept_bypassed_total{reason}``.

The TLS clients are python ssl; the origins are nginx (HTTP over TLS) and a
python TLS server that speaks a private protocol (nginx refuses a handshake
whose ALPN offers nothing it knows).
"""

import socket
import ssl
import subprocess
import threading

import pytest

from support import (
    LOCALHOST,
    MUXD_BIN,
    HTTPReader,
    clean_env,
    echo_stream,
    open_tunnel,
    pattern_bytes,
    recv_all,
    wait_until,
)

ONE_K = pattern_bytes(1024, seed=41)
REASONS = ("host", "not_tls", "silent", "sni", "alpn", "no_sni")


def intercept_conf(pki, port, **sections):
    """Intercept CONNECTs to port; origins are verified against the test CA."""
    c = {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}
    for section, kv in sections.items():
        c.setdefault(section, {}).update(kv)
    return c


def bypassed(m):
    """{reason: count} of muxd_intercept_bypassed_total."""
    metrics = m.metrics()
    return {r: metrics.value("muxd_intercept_bypassed_total", reason=r) for r in REASONS}


def leaf_issued(m):
    return m.metrics().sum("muxd_tls_leaf_issued_total")


def origin_der(pki):
    return ssl.PEM_cert_to_DER_cert(pki.leaf_cert.read_text())


def client_ctx(cafile, alpn=None):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_through(m, authority, ctx, server_hostname):
    """CONNECT authority through muxd, then a TLS handshake inside."""
    resp, reader = open_tunnel(m.port, authority)
    assert resp.status == 200, resp
    assert not reader.buf, f"bytes after the CONNECT 200: {bytes(reader.buf)!r}"
    try:
        return ctx.wrap_socket(reader.sock, server_hostname=server_hostname)
    except BaseException:
        reader.sock.close()
        raise


def tls_get(tls, path, host):
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return HTTPReader(tls).read_response()


class PrivateProtocolServer:
    """A TLS server (the test PKI's leaf) that selects one ALPN protocol and
    answers every line with "<protocol> <line>"."""

    def __init__(self, pki, protocol):
        self.protocol = protocol
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
        self.ctx.set_alpn_protocols([protocol])
        self.selected = []
        self.listener = socket.create_server((LOCALHOST, 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(10)
            try:
                with self.ctx.wrap_socket(sock, server_side=True) as tls:
                    self.selected.append(tls.selected_alpn_protocol())
                    f = tls.makefile("rb")
                    for line in f:
                        tls.sendall(self.protocol.encode() + b" " + line)
            except (OSError, ssl.SSLError):
                sock.close()

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def private_server(pki):
    servers = []

    def start(protocol):
        s = PrivateProtocolServer(pki, protocol)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------
# ALPN


@pytest.mark.parametrize("alpn", [["acme-tls/1"], ["grpc-exp"], ["x-private/2", "x-private/1"]])
def test_unknown_alpn_is_tunneled_and_sees_the_origin_certificate(muxd, pki, private_server, alpn):
    """A client whose ALPN offers neither h2 nor http/1.1 talks to the origin
    itself: the origin's certificate (verified against the test CA, not
    muxd's), the origin's ALPN choice, the origin's bytes."""
    srv = private_server(alpn[-1])
    m = muxd(intercept_conf(pki, srv.port))
    with tls_through(m, f"localhost:{srv.port}", client_ctx(pki.ca_cert, alpn), "localhost") as tls:
        assert tls.getpeercert(binary_form=True) == origin_der(pki), "not the origin's own certificate"
        assert tls.selected_alpn_protocol() == alpn[-1]
        tls.sendall(b"hello\n")
        got = b""
        while not got.endswith(b"\n"):
            data = tls.recv(100)
            assert data, f"EOF after {got!r}"
            got += data
    assert got == alpn[-1].encode() + b" hello\n"
    assert srv.selected == [alpn[-1]]
    counts = bypassed(m)
    assert counts["alpn"] == 1, counts
    assert sum(counts.values()) == 1, counts
    assert leaf_issued(m) == 0
    assert m.metrics().value("muxd_requests_total", proto="tunnel") == 1
    assert f"ALPN '{','.join(alpn)}' offers neither h2 nor http/1.1: tunneled" in m.log(), m.log()


@pytest.mark.parametrize("alpn", [["h2", "http/1.1"], ["http/1.1"], ["h2"], ["acme-tls/1", "http/1.1"], None],
                         ids=["h2+http1.1", "http1.1", "h2", "acme+http1.1", "no-alpn"])
def test_http_alpn_or_none_is_intercepted(muxd, nginx_tls, pki, alpn):
    """A ClientHello that offers h2 or http/1.1 among its protocols, or no
    ALPN at all, gets muxd's leaf (verified against muxd's CA)."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    authority = f"localhost:{nginx_tls.port}"
    with tls_through(m, authority, client_ctx(m.state_dir / "ca.pem", alpn), "localhost") as tls:
        assert tls.getpeercert(binary_form=True) != origin_der(pki)
        selected = tls.selected_alpn_protocol()
        if selected in (None, "http/1.1"):  # HTTP/2 to clients is another item's
            resp = tls_get(tls, "/1k", authority)
            assert resp.status == 200, resp
            assert resp.body == ONE_K
    assert leaf_issued(m) == 1
    counts = bypassed(m)
    assert sum(counts.values()) == 0, counts


# --------------------------------------------------------------------------
# no SNI for a host name


def no_sni_ctx(cafile):
    ctx = client_ctx(cafile)
    ctx.check_hostname = False  # no name sent, none checked: the chain still is
    return ctx


def test_no_sni_for_a_host_name_is_tunneled_by_default(muxd, nginx_tls, pki):
    """CONNECT localhost:PORT, then a ClientHello without SNI: tunneled (the
    default of intercept_without_sni is off), so the client sees nginx's
    certificate."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    authority = f"localhost:{nginx_tls.port}"
    with tls_through(m, authority, no_sni_ctx(pki.ca_cert), None) as tls:
        assert tls.getpeercert(binary_form=True) == origin_der(pki)
        resp = tls_get(tls, "/1k", authority)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    counts = bypassed(m)
    assert counts["no_sni"] == 1 and sum(counts.values()) == 1, counts
    assert leaf_issued(m) == 0
    assert "no SNI for a host name: tunneled" in m.log(), m.log()


def test_no_sni_for_a_host_name_is_intercepted_when_the_route_says_so(muxd, nginx_tls, pki):
    """[route localhost] intercept_without_sni = on: the same client gets
    muxd's leaf for the CONNECT host; other routes keep the default."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port, **{"route localhost": {"intercept_without_sni": "on"}}))
    authority = f"localhost:{nginx_tls.port}"
    with tls_through(m, authority, no_sni_ctx(m.state_dir / "ca.pem"), None) as tls:
        assert tls.getpeercert(binary_form=True) != origin_der(pki)
        names = sorted(v for _, v in tls.getpeercert()["subjectAltName"])
        assert names == ["localhost"], names
        resp = tls_get(tls, "/1k", authority)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    assert leaf_issued(m) == 1
    assert sum(bypassed(m).values()) == 0
    # an address origin without SNI is always intercepted (the leaf names the address)
    with tls_through(m, f"{LOCALHOST}:{nginx_tls.port}", no_sni_ctx(m.state_dir / "ca.pem"), None) as tls:
        assert tls.getpeercert(binary_form=True) != origin_der(pki)
    assert sum(bypassed(m).values()) == 0


def test_route_key_intercept_without_sni_is_validated(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[route *.example]\nintercept_without_sni = maybe\n")
    out = subprocess.run([MUXD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10,
                         env=clean_env())
    assert out.returncode != 0
    assert "[route *.example] intercept_without_sni: bad boolean 'maybe'" in out.stderr, out.stderr


# --------------------------------------------------------------------------
# every reason, counted


def test_every_bypass_is_counted_by_reason(muxd, nginx_tls, pki, private_server, stream_server):
    echo = stream_server(echo_stream)
    srv = private_server("acme-tls/1")
    m = muxd(intercept_conf(pki, f"{nginx_tls.port} {echo.port} {srv.port}",
                            intercept={"bypass": f"localhost:{echo.port}"},
                            muxd={"connect_ports": f"443 {echo.port}"}))
    assert bypassed(m) == {r: 0 for r in REASONS}
    want = {r: 0 for r in REASONS}

    # not_tls: bytes that are no ClientHello
    resp, reader = open_tunnel(m.port, f"{LOCALHOST}:{echo.port}", early=b"ping\n")
    with reader.sock as s:
        assert resp.status == 200, resp
        s.shutdown(socket.SHUT_WR)
        assert bytes(reader.buf) + recv_all(s) == b"ping\n"
    want["not_tls"] += 1
    assert bypassed(m) == want

    # silent: nothing within the peek time, then bytes
    resp, reader = open_tunnel(m.port, f"{LOCALHOST}:{echo.port}")
    with reader.sock as s:
        assert resp.status == 200, resp
        want["silent"] += 1
        wait_until(lambda: bypassed(m) == want, timeout=15, what="the silent peek to end")
        s.sendall(b"late\n")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"late\n"

    # sni: a server name TLS refuses
    ctx = client_ctx(pki.ca_cert)
    ctx.check_hostname = False
    with tls_through(m, f"{LOCALHOST}:{nginx_tls.port}", ctx, "foo_bar.internal") as tls:
        assert tls.getpeercert(binary_form=True) == origin_der(pki)
    want["sni"] += 1
    assert bypassed(m) == want

    # alpn
    with tls_through(m, f"localhost:{srv.port}", client_ctx(pki.ca_cert, ["acme-tls/1"]), "localhost") as tls:
        assert tls.getpeercert(binary_form=True) == origin_der(pki)
    want["alpn"] += 1
    assert bypassed(m) == want

    # no_sni
    with tls_through(m, f"localhost:{nginx_tls.port}", no_sni_ctx(pki.ca_cert), None) as tls:
        assert tls.getpeercert(binary_form=True) == origin_der(pki)
    want["no_sni"] += 1
    assert bypassed(m) == want

    # host: an [intercept] bypass pattern
    resp, reader = open_tunnel(m.port, f"localhost:{echo.port}")
    with reader.sock as s:
        assert resp.status == 200, resp
        s.sendall(b"direct\n")
        s.shutdown(socket.SHUT_WR)
        assert bytes(reader.buf) + recv_all(s) == b"direct\n"
    want["host"] += 1
    wait_until(lambda: bypassed(m) == want, timeout=5, what="the bypass to be counted")

    # intercepted sessions count nothing
    with tls_through(m, f"localhost:{nginx_tls.port}", client_ctx(m.state_dir / "ca.pem"), "localhost") as tls:
        assert tls.getpeercert(binary_form=True) != origin_der(pki)
    assert bypassed(m) == want
