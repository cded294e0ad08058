"""Keep-warm of hot origins ([pool] keep_warm, keep_warm_min_rate,
keep_warm_max): a pool key used often keeps one connection open past
idle_timeout (HTTP/2 PINGs keep it alive at the origin), a key used once does
not; an origin that closes the warm connection gets a new one in the
background; routes with verify = off are never kept warm; keep_warm_max caps
the warm connections; keep_warm = off turns it all off.

Rates: every request adds 0.2 requests/minute (a decay time constant of five
minutes), so with keep_warm_min_rate = 1 eight requests in a row make a key
hot and one request leaves it cold."""

import pytest

from conftest import Nginx, attach_log
from support import HTTPReader, connect, proxy_request, wait_until

HOT = 8  # requests that make a key hot at keep_warm_min_rate = 1


def conf(**pool):
    c = {"muxd": {"log_level": "debug"}, "pool": {"idle_timeout": "1s", "keep_warm_min_rate": "1"}}
    c["pool"].update(pool)
    return c


@pytest.fixture
def http_nginx(request, tmp_path):
    """Factory: http_nginx(extra="") -> a started plain-HTTP nginx."""
    servers = []

    def start(extra=""):
        ng = Nginx(tmp_path / f"nginx_http{len(servers)}", extra=extra)
        servers.append(ng)
        attach_log(request, f"nginx error log ({ng.dir.name})", ng.error_log)
        return ng.start()

    yield start
    for ng in servers:
        ng.stop()


def get(m, url, n=1):
    """n absolute-form GETs of url (also https://: muxd makes the TLS), each
    on a client connection of its own."""
    for _ in range(n):
        with connect(m.port, timeout=20) as s:
            s.sendall(proxy_request("GET", url))
            r = HTTPReader(s).read_response()
        assert r.status == 200, r


def conns(m, port):
    """The status page's connections to 127.0.0.1:port."""
    resp = m.admin("/status.json")
    assert resp.status == 200, resp
    return [c for c in resp.json()["connections"] if c["port"] == port]


def warm_for(m, port, seconds):
    """The one connection to port, once it has been idle `seconds` (several
    idle_timeouts) without leaving the pool."""
    def check():
        cs = conns(m, port)
        assert len(cs) == 1, f"expected one connection to :{port}, got {cs}"
        return cs[0] if cs[0]["idle_s"] >= seconds else None

    return wait_until(check, timeout=seconds + 10, what=f"a connection to :{port} idle for {seconds}s")


def test_hot_origin_stays_connected_cold_one_does_not(muxd, http_nginx):
    hot, cold = http_nginx(), http_nginx()
    (hot.root / "x").write_text("x")
    (cold.root / "x").write_text("x")
    m = muxd(conf())
    get(m, hot.url("/x"), HOT)
    get(m, cold.url("/x"))
    # the cold origin's connection goes at idle_timeout ...
    wait_until(lambda: not conns(m, cold.port), timeout=10, what="the cold connection to close")
    # ... the hot one stays, marked warm, well past it
    c = warm_for(m, hot.port, 3.5)
    assert c["warm"] is True and c["state"] == "idle"
    assert m.metrics().value("muxd_keep_warm_connections") == 1
    assert m.metrics().value("muxd_pool_evictions_total", reason="idle_timeout") == 1
    # and the next request uses it: no new connection at nginx
    get(m, hot.url("/x"))
    wait_until(lambda: len(hot.log_lines()) == HOT + 1, timeout=5, what="nginx access log")
    assert len(hot.connections()) == 1
    # the HTML status page marks it too
    page = m.admin("/").text
    assert "idle, warm" in page or "active, warm" in page


def test_http2_warm_connection_pings_the_origin(muxd, h2_origin, pki):
    """A warm HTTP/2 connection shows the origin it is alive (a PING every
    idle_timeout / 2 while idle) and serves the next request."""
    o = h2_origin()
    m = muxd({**conf(), "route *": {"ca_file": str(pki.ca_cert)}})
    get(m, o.url("/x"), HOT)
    c = warm_for(m, o.port, 3.5)
    assert c["proto"] == "h2" and c["warm"] is True
    assert len(o.conn(0).pings) >= 4, o.conn(0).pings
    get(m, o.url("/x"))
    assert o.connections == 1
    assert [r.conn.id for r in o.requests] == [0] * (HOT + 1)


def test_http2_origin_ending_the_warm_connection_gets_a_new_one(muxd, tls_nginx_factory, pki):
    """nginx ends HTTP/2 connections idle for its keepalive_timeout (2 s
    here; PINGs do not count for it) with GOAWAY: muxd opens the next one in
    the background, and the next request finds it ready."""
    ng = tls_nginx_factory(http2=True, extra="keepalive_timeout 2s;")
    (ng.root / "x").write_text("x")
    m = muxd({**conf(), "route *": {"ca_file": str(pki.ca_cert)}})
    get(m, ng.url("/x"), HOT)
    wait_until(lambda: m.metrics().value("muxd_keep_warm_reconnects_total") >= 1, timeout=15,
               what="a background re-open")
    wait_until(lambda: [c for c in conns(m, ng.port) if c["state"] == "idle" and c["warm"]],
               timeout=5, what="the re-opened connection to be up")
    before = m.metrics().value("muxd_upstream_connections_opened_total", proto="h2")
    get(m, ng.url("/x"))
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h2") == before
    wait_until(lambda: len(ng.log_lines()) == HOT + 1, timeout=5, what="nginx access log")
    assert len(ng.connections()) == 2, ng.log_lines()


def test_origin_closing_the_warm_connection_gets_a_new_one(muxd, http_nginx):
    # nginx closes keep-alive connections idle for 3 s
    ng = http_nginx(extra="keepalive_timeout 3s;")
    (ng.root / "x").write_text("x")
    m = muxd(conf())
    get(m, ng.url("/x"), HOT)
    opened = m.metrics().value("muxd_upstream_connections_opened_total", proto="h1")
    assert opened == 1
    wait_until(lambda: m.metrics().value("muxd_keep_warm_reconnects_total") >= 1, timeout=15,
               what="a background re-open")
    mt = m.metrics()
    assert mt.value("muxd_upstream_connections_opened_total", proto="h1") >= 2
    assert mt.value("muxd_keep_warm_connections") == 1
    wait_until(lambda: [c for c in conns(m, ng.port) if c["state"] == "idle" and c["warm"]],
               timeout=5, what="the re-opened connection to be up")
    # the next request goes on the re-opened connection: a new one at nginx,
    # and none opened for the request itself
    before = m.metrics().value("muxd_upstream_connections_opened_total", proto="h1")
    get(m, ng.url("/x"))
    wait_until(lambda: len(ng.log_lines()) == HOT + 1, timeout=5, what="nginx access log")
    assert len(ng.connections()) == 2, ng.log_lines()
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h1") == before


def test_verify_off_route_is_never_kept_warm(muxd, nginx_tls):
    (nginx_tls.root / "x").write_text("x")
    m = muxd({**conf(), "route *": {"verify": "off"}})
    get(m, nginx_tls.url("/x"), HOT)
    wait_until(lambda: not conns(m, nginx_tls.port), timeout=10, what="the connection to close")
    assert m.metrics().value("muxd_keep_warm_connections") == 0


def test_keep_warm_max_caps_the_warm_connections(muxd, http_nginx):
    a, b = http_nginx(), http_nginx()
    for ng in (a, b):
        (ng.root / "x").write_text("x")
    m = muxd(conf(keep_warm_max="1"))
    get(m, a.url("/x"), HOT)
    get(m, b.url("/x"), HOT)

    def one_left():
        left = conns(m, a.port) + conns(m, b.port)
        return left if len(left) == 1 and left[0]["idle_s"] >= 2.5 else None

    left = wait_until(one_left, timeout=15, what="one warm connection of two hot origins")
    assert left[0]["warm"] is True
    assert m.metrics().value("muxd_keep_warm_connections") == 1


def test_keep_warm_off(muxd, http_nginx):
    ng = http_nginx()
    (ng.root / "x").write_text("x")
    m = muxd(conf(keep_warm="off"))
    get(m, ng.url("/x"), HOT)
    wait_until(lambda: not conns(m, ng.port), timeout=10, what="the connection to close")
    assert m.metrics().value("muxd_keep_warm_connections") == 0


def test_http3_warm_connection_outlives_the_origins_idle_timeout(muxd, tls_nginx_factory, h3_server, pki):
    """A warm QUIC connection sends keep-alive PINGs (within half the idle
    timeout in force, here the origin's 2 s): it outlives that timeout and
    serves the next request."""
    from test_h3 import h3_conf, which

    q = h3_server(options=("--timeout=2s",))
    (q.root / "which").write_text("quic\n")
    ng = tls_nginx_factory(http2=True, extra=f"add_header Alt-Svc 'h3=\":{q.port}\"; ma=3600' always;")
    (ng.root / "which").write_text("tcp\n")
    m = muxd({**h3_conf(pki, ng.port), **conf()})
    assert which(m, ng) == "tcp"
    assert [which(m, ng) for _ in range(HOT)] == ["quic"] * HOT
    c = wait_until(lambda: [c for c in conns(m, ng.port) if c["proto"] == "h3" and c["idle_s"] >= 5],
                   timeout=20, what="the QUIC connection idle for 5 s")[0]
    assert c["warm"] is True
    assert which(m, ng) == "quic"
    mt = m.metrics()
    assert mt.sum("muxd_upstream_connections_opened_total", proto="h3") == 1
    assert mt.sum("muxd_h3_fallbacks_total") == 0
