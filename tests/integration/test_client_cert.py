"""TLS client certificates per route ([route PATTERN] client_cert and
client_key): muxd presents the route's certificate when the origin asks for
one, a route without one gets the origin's refusal, and connections made with
different client certificates are never shared (DESIGN.md principle 2).

The origin is nginx with ``ssl_verify_client on`` and the test CA as
``ssl_client_certificate``; a location answers with nginx's connection serial
number and the client certificate's subject ($ssl_client_s_dn), so every
response says which connection and which certificate served it."""

import subprocess

import pytest

from support import MUXD_BIN, HTTPReader, _certtool, connect, proxy_request, wait_until

CLIENT_TEMPLATE = """\
cn = "{cn}"
organization = "muxd tests"
serial = {serial}
expiration_days = 30
tls_www_client
signing_key
"""

# $connection and the client's subject, per request
VERIFY_CLIENT = """\
ssl_client_certificate {ca};
ssl_verify_client on;
location = /who {{ default_type text/plain; return 200 "$connection $ssl_client_s_dn\\n"; }}
"""


class ClientCert:
    def __init__(self, d, name, serial, pki):
        self.cn = f"muxd client {name}"
        self.cert = d / f"client-{name}.pem"
        self.key = d / f"client-{name}.key"
        tmpl = d / f"client-{name}.tmpl"
        tmpl.write_text(CLIENT_TEMPLATE.format(cn=self.cn, serial=serial))
        _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(self.key))
        _certtool("--generate-certificate", "--load-privkey", str(self.key), "--load-ca-certificate",
                  str(pki.ca_cert), "--load-ca-privkey", str(pki.ca_key), "--template", str(tmpl),
                  "--outfile", str(self.cert))

    def route(self, **more):
        return {"client_cert": self.cert, "client_key": self.key, **more}


@pytest.fixture(scope="module")
def clients(tmp_path_factory, pki):
    """Two client certificates signed by the test CA."""
    d = tmp_path_factory.mktemp("clients")
    return ClientCert(d, "one", 101, pki), ClientCert(d, "two", 102, pki)


@pytest.fixture
def mtls_nginx(tls_nginx_factory, pki):
    """HTTPS nginx that requires a client certificate signed by the test CA."""
    return tls_nginx_factory(extra=VERIFY_CLIENT.format(ca=pki.ca_cert))


def https_get(m, url, timeout=10):
    """One absolute-form GET https://... on its own client connection."""
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def who(m, url):
    """(nginx connection serial, client subject) of one request through m."""
    resp = https_get(m, url)
    assert resp.status == 200, resp
    conn, _, dn = resp.text.strip().partition(" ")
    return conn, dn


def test_route_certificate_is_presented(muxd, mtls_nginx, pki, clients):
    one, _ = clients
    m = muxd({"route *": {"ca_file": pki.ca_cert}, "route 127.0.0.1": one.route()})
    url = f"https://127.0.0.1:{mtls_nginx.port}/who"
    conns = set()
    for _ in range(3):
        conn, dn = who(m, url)
        assert f"CN={one.cn}" in dn, dn
        conns.add(conn)
    assert len(conns) == 1, f"a client-certificate connection was not reused: {conns}"


def test_inherited_from_route_star(muxd, mtls_nginx, pki, clients):
    _, two = clients
    m = muxd({"route *": two.route(ca_file=pki.ca_cert), "route 127.0.0.1": {"h2": "off"}})
    _, dn = who(m, f"https://127.0.0.1:{mtls_nginx.port}/who")
    assert f"CN={two.cn}" in dn, dn


def test_without_certificate_the_origin_refuses(muxd, mtls_nginx, pki, clients):
    # nginx completes the handshake without a certificate and answers with an
    # HTTP 400 of its own; that is the origin's response, which muxd relays
    one, _ = clients
    m = muxd({"route *": {"ca_file": pki.ca_cert}, "route localhost": one.route()})
    resp = https_get(m, f"https://127.0.0.1:{mtls_nginx.port}/who")
    assert resp.status == 400, resp
    assert "No required SSL certificate was sent" in resp.text, resp
    assert resp.headers.get("server", "").startswith("nginx"), resp


def test_different_certificates_never_share_a_connection(muxd, mtls_nginx, pki, clients):
    one, two = clients
    m = muxd({
        "route *": {"ca_file": pki.ca_cert},
        "route 127.0.0.1": one.route(),
        "route localhost": two.route(),
    })
    seen = {}
    for _ in range(3):
        for host, cert in (("127.0.0.1", one), ("localhost", two)):
            conn, dn = who(m, f"https://{host}:{mtls_nginx.port}/who")
            assert f"CN={cert.cn}" in dn, f"{host}: {dn}"
            seen.setdefault(host, set()).add(conn)
    assert len(seen["127.0.0.1"]) == 1 and len(seen["localhost"]) == 1, seen
    assert seen["127.0.0.1"].isdisjoint(seen["localhost"]), seen
    wait_until(lambda: len(mtls_nginx.log_lines()) >= 6, timeout=5, what="nginx access log")
    assert len(mtls_nginx.connections()) == 2, mtls_nginx.log_lines()
    assert m.metrics().sum("muxd_upstream_connections_opened_total") == 2


def check_config(tmp_path, text):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = subprocess.run([MUXD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=20)
    return conf, r


def test_mismatched_key_is_a_config_error(tmp_path, clients):
    one, two = clients
    conf, r = check_config(tmp_path, f"[route *]\nclient_cert = {one.cert}\nclient_key = {two.key}\n")
    assert r.returncode != 0
    assert f"{conf}:3: [route *] client_key: " in r.stderr, r.stderr
    assert "does not match client_cert" in r.stderr, r.stderr


def test_certificate_without_key_is_a_config_error(tmp_path, clients):
    one, _ = clients
    conf, r = check_config(tmp_path, f"[route a.test]\nclient_cert = {one.cert}\n")
    assert r.returncode != 0
    assert f"{conf}:2: [route a.test] client_cert: given without client_key" in r.stderr, r.stderr
