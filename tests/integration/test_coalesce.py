"""HTTP/2 and HTTP/3 connection coalescing (RFC 9113 9.1.1, RFC 9114 3.3): a
request for b.localhost goes on the open connection made for a.localhost when
b.localhost resolves to that connection's peer address (every *.localhost
name is loopback, RFC 6761), the certificate the origin presented covers
b.localhost, and the rest of the pool key is equal. A name the certificate does not cover gets its own
connection; a 421 Misdirected Request on a shared connection is retried on a
connection of the request's own name, and that pair is not coalesced again."""

import subprocess

import pytest

from conftest import Nginx, attach_log
from support import HTTPReader, connect, proxy_request, wait_until


def make_cert(pki, d, names, serial):
    """A leaf for DNS names `names`, signed by the test CA: (cert, key)."""
    d.mkdir(parents=True, exist_ok=True)
    stem = d / names[0]
    key, cert, tmpl = stem.with_suffix(".key"), stem.with_suffix(".crt"), stem.with_suffix(".tmpl")
    tmpl.write_text(f'cn = "{names[0]}"\nserial = {serial}\nexpiration_days = 30\n'
                    + "".join(f'dns_name = "{n}"\n' for n in names)
                    + "tls_www_server\nsigning_key\nencryption_key\n")
    for args in (["--generate-privkey", "--key-type=ecdsa", "--outfile", str(key)],
                 ["--generate-certificate", "--load-privkey", str(key), "--load-ca-certificate",
                  str(pki.ca_cert), "--load-ca-privkey", str(pki.ca_key), "--template", str(tmpl),
                  "--outfile", str(cert)]):
        subprocess.run(["certtool", *args], check=True, capture_output=True)
    return cert, key


def get(m, url):
    with connect(m.port, timeout=20) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def conf(pki, **pool):
    return {"muxd": {"log_level": "debug"}, "pool": dict(pool), "route *": {"ca_file": str(pki.ca_cert)}}


def connections(m):
    resp = m.admin("/status.json")
    assert resp.status == 200, resp
    return resp.json()["connections"]


@pytest.fixture
def sni_nginx(request, tmp_path, pki):
    """An HTTP/2 nginx that picks its certificate by SNI: a.localhost and
    b.localhost get one that covers both, c.localhost one of its own."""
    certs = tmp_path / "certs"
    ab = make_cert(pki, certs, ["a.localhost", "b.localhost"], 40)
    c = make_cert(pki, certs, ["c.localhost"], 41)
    for name, (cert, key) in (("a.localhost", ab), ("b.localhost", ab), ("c.localhost", c)):
        (certs / f"sni-{name}.crt").write_bytes(cert.read_bytes())
        (certs / f"sni-{name}.key").write_bytes(key.read_bytes())
    ng = Nginx(tmp_path / "nginx_sni", tls=(f"{certs}/sni-$ssl_server_name.crt", f"{certs}/sni-$ssl_server_name.key"),
               http2=True)
    attach_log(request, "nginx error log (sni)", ng.error_log)
    ng.start()
    yield ng
    ng.stop()


def test_two_names_share_one_http2_connection(muxd, sni_nginx, pki):
    ng = sni_nginx
    (ng.root / "x").write_text("x")
    m = muxd(conf(pki))
    for name in ("a", "b", "b", "a"):
        r = get(m, f"https://{name}.localhost:{ng.port}/x")
        assert r.status == 200, r
    wait_until(lambda: len(ng.log_lines()) == 4, timeout=5, what="nginx access log")
    assert ng.protocols() == ["HTTP/2.0"] * 4
    assert len(ng.connections()) == 1, ng.log_lines()
    cs = connections(m)
    assert len(cs) == 1, cs
    assert cs[0]["host"] == "a.localhost" and cs[0]["hosts"] == ["a.localhost", "b.localhost"]
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h2") == 1
    # the HTML page names both
    assert "a.localhost b.localhost" in m.admin("/").text

    # c.localhost is not in that certificate: a connection of its own
    r = get(m, f"https://c.localhost:{ng.port}/x")
    assert r.status == 200, r
    wait_until(lambda: len(ng.log_lines()) == 5, timeout=5, what="nginx access log")
    assert len(ng.connections()) == 2, ng.log_lines()
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h2") == 2
    hosts = sorted(tuple(c["hosts"]) for c in connections(m))
    assert hosts == [("a.localhost", "b.localhost"), ("c.localhost",)]


def test_different_route_settings_are_not_coalesced(muxd, sni_nginx, pki):
    """b.localhost's route differs (HTTP/2 off): its key differs in more than
    the host, so it never shares a.localhost's connection."""
    ng = sni_nginx
    (ng.root / "x").write_text("x")
    m = muxd({**conf(pki), "route b.localhost": {"h2": "off"}})
    for name in ("a", "b"):
        r = get(m, f"https://{name}.localhost:{ng.port}/x")
        assert r.status == 200, r
    wait_until(lambda: len(ng.log_lines()) == 2, timeout=5, what="nginx access log")
    assert len(ng.connections()) == 2, ng.log_lines()
    assert ng.protocols() == ["HTTP/2.0", "HTTP/1.1"]


def test_misdirected_request_is_retried_on_its_own_connection(muxd, h2_origin, pki, tmp_path):
    """The origin answers 421 to b.localhost on the connection made for
    a.localhost: muxd retries on a connection for b.localhost (the client
    sees the 200), and later requests for b.localhost never go on a
    a.localhost connection again."""
    cert, key = make_cert(pki, tmp_path / "certs", ["a.localhost", "b.localhost"], 42)

    def handler(req):
        first = req.conn.requests[0].authority.split(":")[0]
        name = req.authority.split(":")[0]
        if name != first:
            req.respond(421, [("content-type", "text/plain")], b"misdirected\n")
        else:
            req.respond(200, [("content-type", "text/plain")], f"{name} on {req.conn.id}\n".encode())

    o = h2_origin(handler)
    o.ctx.load_cert_chain(str(cert), str(key))  # the a+b certificate
    # a stays connected (keep-warm: hot); b's own connection idles out
    m = muxd(conf(pki, idle_timeout="1s", keep_warm_min_rate="1"))
    for _ in range(8):
        r = get(m, f"https://a.localhost:{o.port}/x")
        assert r.status == 200 and r.body == b"a.localhost on 0\n", r
    r = get(m, f"https://b.localhost:{o.port}/x")
    assert r.status == 200 and r.body == b"b.localhost on 1\n", r
    statuses = [(q.conn.id, q.authority.split(":")[0]) for q in o.requests[8:]]
    assert statuses == [(0, "b.localhost"), (1, "b.localhost")]
    assert m.metrics().value("muxd_upstream_retries_total") == 1

    # once b's own connection is gone, b still does not go on a's
    wait_until(lambda: [c["hosts"] for c in connections(m)] == [["a.localhost"]], timeout=10,
               what="b.localhost's connection to close")
    r = get(m, f"https://b.localhost:{o.port}/x")
    assert r.status == 200 and r.body == b"b.localhost on 2\n", r
    assert m.metrics().value("muxd_upstream_retries_total") == 1


def test_http3_connection_is_shared_too(request, muxd, h3_server, pki, tmp_path):
    """a.localhost's requests go over HTTP/3 once nginx advertised it (nginx
    then closes each TCP connection after one request); b.localhost, never
    advertised, shares that QUIC connection: its answer comes from the QUIC
    server, not from nginx."""
    cert = make_cert(pki, tmp_path / "certs", ["a.localhost", "b.localhost"], 43)
    q = h3_server(cert=cert)
    (q.root / "which").write_text("quic\n")
    ng = Nginx(tmp_path / "nginx_h3", tls=cert, http2=True,
               extra=f"add_header Alt-Svc 'h3=\":{q.port}\"; ma=3600' always;\nkeepalive_requests 1;")
    attach_log(request, "nginx error log (h3)", ng.error_log)
    ng.start()
    try:
        (ng.root / "which").write_text("tcp\n")
        m = muxd(conf(pki))
        a, b = f"https://a.localhost:{ng.port}/which", f"https://b.localhost:{ng.port}/which"
        assert get(m, a).body == b"tcp\n"
        assert get(m, a).body == b"quic\n"
        assert get(m, b).body == b"quic\n"
        mt = m.metrics()
        assert mt.sum("muxd_upstream_connections_opened_total", proto="h3") == 1
        assert mt.sum("muxd_requests_total", proto="h3") == 2
        cs = [c for c in connections(m) if c["proto"] == "h3"]
        assert len(cs) == 1 and cs[0]["hosts"] == ["a.localhost", "b.localhost"], cs
    finally:
        ng.stop()
