"""TLS to origins: absolute-form https:// requests sent in plain text to
muxd, which originates TLS itself (trust anchors and verification from the
request's route), pools the TLS connections, reports certificate failures as
502 and resumes TLS sessions."""

import time

import pytest

from support import HTTPReader, connect, pattern_bytes, proxy_request, wait_until

ONE_K = pattern_bytes(1024, seed=11)


def https_get(m, url, timeout=10):
    """One absolute-form GET https://... on its own client connection."""
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def wait_reloaded(m, count):
    """Wait until muxd has logged `configuration reloaded` count times."""
    wait_until(lambda: m.log().count("configuration reloaded") >= count, timeout=10, what="the reload")


def opened(m):
    return m.metrics().sum("muxd_upstream_connections_opened_total")


def assert_tls_failure(resp, authority):
    assert resp.status == 502, resp
    assert resp.headers.get("content-type", "").startswith("text/plain"), resp
    text = resp.text.strip()
    assert "\n" not in text, f"the body is not one line: {text!r}"
    assert authority in text, f"the body does not name {authority}: {text!r}"
    low = text.lower()
    assert "certificate" in low or "unknown" in low or "issuer" in low, f"no reason in {text!r}"


def test_twenty_https_clients_share_tls_connections(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd({"route *": {"ca_file": pki.ca_cert}})
    for i in range(20):
        resp = https_get(m, nginx_tls.url("/1k"))
        assert resp.status == 200, f"request {i}: {resp}"
        assert resp.body == ONE_K, f"request {i}: body differs"
    wait_until(lambda: len(nginx_tls.log_lines()) >= 20, timeout=5, what="nginx access log")
    assert len(nginx_tls.log_lines()) == 20
    conns = nginx_tls.connections()
    assert len(conns) <= 2, f"nginx saw {len(conns)} TLS connections"
    assert opened(m) <= 2


def test_unknown_ca_is_502_naming_host_and_reason(muxd, nginx_selfsigned, pki):
    (nginx_selfsigned.root / "1k").write_bytes(ONE_K)
    url = nginx_selfsigned.url("/1k")
    # the system store, then the test CA: neither trusts a self-signed leaf
    for conf in (None, {"route *": {"ca_file": pki.ca_cert}}):
        m = muxd(conf)
        assert_tls_failure(https_get(m, url), nginx_selfsigned.authority)
        m.stop()
    assert not nginx_selfsigned.log_lines(), "a request reached the untrusted origin"


def test_verify_off_route_accepts_self_signed(muxd, nginx_selfsigned):
    (nginx_selfsigned.root / "1k").write_bytes(ONE_K)
    url = nginx_selfsigned.url("/1k")
    m = muxd({"route *": {"verify": "on"}, f"route {nginx_selfsigned.authority}": {"verify": "off"}})
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert resp.body == ONE_K


def test_verify_off_route_does_not_leak_to_other_origins(muxd, nginx_selfsigned, nginx_tls, pki):
    """A verify = off route for one host:port leaves every other origin
    verified (the route is the most specific match only for its origin)."""
    (nginx_selfsigned.root / "1k").write_bytes(ONE_K)
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd({f"route {nginx_tls.authority}": {"verify": "off"}})
    # the CA-signed origin, with verification off: served
    resp = https_get(m, nginx_tls.url("/1k"))
    assert resp.status == 200, resp
    # the self-signed origin is still verified (system store): refused
    assert_tls_failure(https_get(m, nginx_selfsigned.url("/1k")), nginx_selfsigned.authority)


def test_verify_off_connection_never_serves_verify_on(muxd, nginx_tls, pki):
    """Same origin, route switched by SIGHUP: the pooled connection made with
    verification off is not reused once the route wants verification."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    url = nginx_tls.url("/1k")
    on = {"route *": {"ca_file": pki.ca_cert}}
    off = {"route *": {"ca_file": pki.ca_cert}, f"route {nginx_tls.authority}": {"verify": "off"}}

    m = muxd(off)
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert opened(m) == 1
    m.reload(on)
    wait_reloaded(m, 1)
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    assert opened(m) == 2, "the verify = off connection served a verified request"
    # with the route unchanged, the verified connection is reused
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert opened(m) == 2
    m.stop()


def test_verify_on_connection_not_reused_for_verify_off(muxd, nginx_tls, pki):
    """The other direction: verify on (ca_file = CA), then a reload adds a
    verify = off route for the origin: a new connection is opened."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    url = nginx_tls.url("/1k")
    on = {"route *": {"ca_file": pki.ca_cert}}
    off = {"route *": {"ca_file": pki.ca_cert}, f"route {nginx_tls.authority}": {"verify": "off"}}

    m = muxd(on)
    resp = https_get(m, url)
    assert resp.status == 200, resp
    before = opened(m)
    assert before == 1
    m.reload(off)
    wait_reloaded(m, 1)
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    assert opened(m) == before + 1, "the pooled connection was reused across a different route"
    wait_until(lambda: len(nginx_tls.log_lines()) >= 2, timeout=5, what="nginx access log")
    assert len(nginx_tls.connections()) == 2


@pytest.mark.parametrize("protocol", ["TLSv1.2", "TLSv1.3"])
def test_tls_session_resumed_after_eviction(muxd, tls_nginx_factory, pki, protocol):
    nginx_tls = tls_nginx_factory(protocols=protocol)
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    url = nginx_tls.url("/1k")
    m = muxd({"pool": {"idle_timeout": "1s"}, "route *": {"ca_file": pki.ca_cert}}, args=["-v"])
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert "full handshake" in m.log()
    assert "resumed session" not in m.log()
    def evicted():
        metrics = m.metrics()
        return metrics.sum("muxd_upstream_connections") == 0

    # idle_timeout = 1s
    wait_until(evicted, timeout=6.5, what="the idle TLS connection to be evicted")
    resp = https_get(m, url)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    wait_until(lambda: len(nginx_tls.log_lines()) >= 2, timeout=5, what="nginx access log")
    assert len(nginx_tls.connections()) == 2, "the second request did not use a new TLS connection"
    assert "resumed session" in m.log(), "the second TLS connection did not resume the session"
