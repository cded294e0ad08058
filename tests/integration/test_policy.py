"""Pool policy: the [pool] limits (idle_timeout, max_idle_per_origin,
max_idle, max_connections, max_h1_per_origin, max_h2_per_origin,
max_requests_per_connection, max_connection_age), every eviction reason of
muxd_pool_evictions_total{reason} (idle_timeout, limit, dead, goaway, age),
pool keys that keep verify = off apart from verified connections, SIGHUP
draining connections no route makes any more, and running out of file
descriptors (503s, no spinning, full service afterwards).

Python origins (support.Origin) count the connections they accept
(.connections) and the ones still open (.active): when muxd closes a pooled
connection, the origin's .active drops.  /status.json lists muxd's side.
"""

import os
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import (
    SANITIZE,
    HTTPReader,
    connect,
    pattern_bytes,
    proxy_request,
    wait_until,
)

ONE_K = pattern_bytes(1024, seed=8)
TRIM_GRACE = 0.25  # surplus idle connections are closed after this grace


# --------------------------------------------------------------------------
# helpers


def get(m, url, timeout=10):
    """One absolute-form GET on its own client connection."""
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def concurrently(n, fn, timeout=60):
    """Run fn(i) in n threads released together; results in order (an
    exception is returned in place of its result)."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait(timeout)
        return fn(i)

    out = [None] * n
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(run, i) for i in range(n)]
        for i, f in enumerate(futures):
            try:
                out[i] = f.result(timeout)
            except Exception as e:  # noqa: BLE001 - reported by the caller
                out[i] = e
    return out


def assert_all_ok(results, what=""):
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception) or r.status != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {bad[:5]} {what}"


def evictions(m, reason):
    return m.metrics().value("muxd_pool_evictions_total", reason=reason)


def pool_conns(m):
    """muxd's upstream connections as /status.json lists them."""
    resp = m.admin("/status.json")
    assert resp.status == 200, resp
    return resp.json()["connections"]


def idle_past_grace(m):
    """Wait until /status.json has every pooled connection idle for longer
    than the trim grace: muxd arms its trim when a connection goes idle, so
    a trim still to come would have happened by then."""
    wait_until(lambda: (conns := pool_conns(m)) and all(c["idle_s"] >= TRIM_GRACE + 0.25 for c in conns),
               timeout=10, what="the pooled connections to be idle past the trim grace")


def pool_ports(m):
    return sorted(c["port"] for c in pool_conns(m))


def opened(m):
    return m.metrics().sum("muxd_upstream_connections_opened_total")


def wait_reloaded(m, count):
    wait_until(lambda: m.log().count("configuration reloaded") >= count, timeout=10, what="the reload")


def sleepy_handler(delay):
    def handler(req, conn):
        time.sleep(delay)  # the origin's pace: concurrent requests overlap
        conn.respond_json(req.as_json())

    return handler


def tls_conf(pki, pool=None, **sections):
    """Config trusting the test CA for every origin, plus [pool] keys."""
    c = {"route *": {"ca_file": pki.ca_cert}}
    if pool:
        c["pool"] = dict(pool)
    c.update(sections)
    return c


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# idle_timeout


def test_idle_timeout_closes_idle_connection(muxd, origin):
    o = origin()
    m = muxd({"pool": {"idle_timeout": "1s"}})
    resp = get(m, o.url("/a"))
    assert resp.status == 200, resp
    t0 = time.monotonic()
    # reused while younger than idle_timeout
    resp = get(m, o.url("/b"))
    assert resp.json()["conn"] == 0
    assert o.active == 1
    wait_until(lambda: o.active == 0, timeout=5, what="muxd to close the idle connection")
    assert time.monotonic() - t0 >= 0.8, "the idle connection was closed before idle_timeout"
    assert evictions(m, "idle_timeout") == 1
    assert pool_conns(m) == []
    resp = get(m, o.url("/c"))
    assert resp.status == 200, resp
    assert resp.json()["conn"] == 1
    assert evictions(m, "limit") == 0


# --------------------------------------------------------------------------
# max_idle_per_origin, max_idle (LRU), max_connections (LRU, 503)


def test_max_idle_per_origin_trims_surplus_after_grace(muxd, origin):
    """Three concurrent requests open three connections; with
    max_idle_per_origin = 1 two are surplus once idle, but a burst right
    after reuses them (the grace), and only then are two closed (limit)."""
    o = origin(sleepy_handler(0.3))
    m = muxd({"pool": {"max_idle_per_origin": 1}})
    assert_all_ok(concurrently(3, lambda i: get(m, o.url(f"/first{i}"))))
    assert o.connections == 3
    # a second burst right away finds the three connections still pooled
    assert_all_ok(concurrently(3, lambda i: get(m, o.url(f"/second{i}"))))
    assert o.connections == 3, "idle connections over the cap were closed without the grace"
    wait_until(lambda: o.active == 1, timeout=5, what="two surplus idle connections to be closed")
    # nothing more must close: look again once muxd's own clock has the
    # survivor idle past the grace (no event marks a trim that did not happen)
    idle_past_grace(m)
    assert o.active == 1
    assert evictions(m, "limit") == 2
    conns = pool_conns(m)
    assert [(c["port"], c["state"]) for c in conns] == [(o.port, "idle")], conns
    resp = get(m, o.url("/third"))
    assert resp.status == 200, resp
    assert o.connections == 3, "the remaining idle connection was not reused"


@pytest.mark.parametrize("order,victim", [("ABC", "A"), ("ABAC", "B")])
def test_max_idle_closes_least_recently_used(muxd, origin, order, victim):
    """max_idle = 2 across three origins used in `order`: the idle
    connection used least recently is the one closed (with ABAC that is B,
    although A's connection is the oldest)."""
    origins = {name: origin() for name in "ABC"}
    m = muxd({"pool": {"max_idle": 2}})
    for name in order:
        resp = get(m, origins[name].url(f"/{name}"))
        assert resp.status == 200, resp
        time.sleep(0.03)  # the client's pace: distinct last-use times make "least recently" unambiguous
    keep = sorted(set("ABC") - {victim})
    wait_until(lambda: origins[victim].active == 0, timeout=5, what=f"{victim}'s idle connection to be closed")
    idle_past_grace(m)  # nothing more must close (see above)
    assert {n: o.active for n, o in origins.items()} == {n: int(n != victim) for n in "ABC"}
    assert {n: o.connections for n, o in origins.items()} == {"A": 1, "B": 1, "C": 1}
    assert pool_ports(m) == sorted(origins[n].port for n in keep)
    assert evictions(m, "limit") == 1


@pytest.mark.parametrize("order,victim", [("ABC", "A"), ("ABAC", "B")])
def test_max_connections_evicts_least_recently_used_idle(muxd, origin, order, victim):
    """max_connections = 2: a request to a third origin evicts the idle
    connection (of any origin) used least recently and opens its own."""
    origins = {name: origin() for name in "ABC"}
    m = muxd({"pool": {"max_connections": 2}})
    for name in order:
        resp = get(m, origins[name].url(f"/{name}"))
        assert resp.status == 200, resp
        time.sleep(0.03)  # the client's pace: distinct last-use times
    wait_until(lambda: origins[victim].active == 0, timeout=5, what=f"{victim}'s idle connection to be closed")
    assert {n: o.active for n, o in origins.items()} == {n: int(n != victim) for n in "ABC"}
    keep = sorted(set("ABC") - {victim})
    assert pool_ports(m) == sorted(origins[n].port for n in keep)
    assert evictions(m, "limit") == 1
    assert m.metrics().sum("muxd_upstream_connections") <= 2


def test_max_connections_503_when_nothing_idle(muxd, origin):
    """max_connections = 1 held by a slow request: a request to another
    origin waits connect_timeout (1 s), then gets 503; once the slow one is
    done its idle connection is evicted for the other origin."""
    release = threading.Event()

    def slow(req, conn):
        release.wait(15)
        conn.respond_json(req.as_json())

    a = origin(slow)
    b = origin()
    m = muxd({"pool": {"max_connections": 1, "connect_timeout": "1s"}})
    with ThreadPoolExecutor(1) as ex:
        held = ex.submit(get, m, a.url("/slow"), 20)
        wait_until(lambda: len(a.requests) == 1, timeout=5, what="the slow request to reach its origin")
        t0 = time.monotonic()
        resp = get(m, b.url("/other"))
        elapsed = time.monotonic() - t0
        assert resp.status == 503, resp
        assert "upstream connection limit reached" in resp.text, resp
        assert 0.8 <= elapsed <= 3.0, f"503 after {elapsed:.2f}s, connect_timeout is 1s"
        assert b.connections == 0
        assert not held.done(), "the slow request was disturbed"
        release.set()
        resp = held.result(20)
    assert resp.status == 200, resp
    resp = get(m, b.url("/other"))
    assert resp.status == 200, resp
    wait_until(lambda: a.active == 0, timeout=5, what="a's idle connection to be evicted")
    assert evictions(m, "limit") == 1


# --------------------------------------------------------------------------
# per-origin connection limits


def test_max_h1_per_origin_caps_concurrent_connections(muxd, origin):
    o = origin(sleepy_handler(0.3))
    m = muxd({"pool": {"max_h1_per_origin": 2}})
    results = concurrently(6, lambda i: get(m, o.url(f"/q{i}"), timeout=20))
    assert_all_ok(results)
    assert sorted(r.json()["target"] for r in results) == sorted(f"/q{i}" for i in range(6))
    assert o.connections == 2
    assert o.max_active == 2
    assert len(o.requests) == 6


def test_max_h2_per_origin_caps_connections(muxd, h2_origin, pki):
    """One stream per connection (SETTINGS_MAX_CONCURRENT_STREAMS = 1) and
    max_h2_per_origin = 2: six clients share two connections."""

    def handler(req):
        time.sleep(0.3)  # the origin's pace: the six requests overlap
        req.respond(200, [("content-type", "text/plain")], f"{req.path} conn={req.conn.id}\n")

    o = h2_origin(handler, max_concurrent_streams=1)
    m = muxd(tls_conf(pki, pool={"max_h2_per_origin": 2}))
    results = concurrently(6, lambda i: get(m, o.url(f"/s{i}"), timeout=20))
    per_conn = [(c.id, len(c.requests), c.max_open_acked, len(c.refused)) for c in o.conns]
    assert_all_ok(results, what=f"origin connections {per_conn}, errors {o.errors}")
    assert o.connections == 2, per_conn
    assert all(mx <= 1 for _, _, mx, _ in per_conn), per_conn
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h2") == 2


# --------------------------------------------------------------------------
# reason age: max_requests_per_connection, max_connection_age


def test_max_requests_per_connection(muxd, origin):
    o = origin()
    m = muxd({"pool": {"max_requests_per_connection": 2}})
    for i in range(6):
        resp = get(m, o.url(f"/r{i}"))
        assert resp.status == 200, resp
    assert [(q.conn_id, q.index) for q in o.requests] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    # each connection closes once idle after its second request
    wait_until(lambda: o.active == 0, timeout=5, what="the used-up connections to close")
    wait_until(lambda: evictions(m, "age") == 3, timeout=5, what="three age evictions")
    assert evictions(m, "limit") == 0


def test_max_connection_age_replaces_old_idle_connection(muxd, origin):
    o = origin()
    m = muxd({"pool": {"max_connection_age": "1s"}})
    for path in ("/a", "/b"):
        resp = get(m, o.url(path))
        assert resp.json()["conn"] == 0
    assert o.active == 1
    # muxd's own clock has the connection older than max_connection_age
    # (or it has already left the pool for its age)
    wait_until(lambda: all(c["age_s"] >= 1.2 for c in pool_conns(m)), timeout=10,
               what="the connection to be older than max_connection_age")
    resp = get(m, o.url("/c"))
    assert resp.status == 200, resp
    assert resp.json()["conn"] == 1, "a connection older than max_connection_age took a new request"
    wait_until(lambda: o.active == 1, timeout=5, what="the old connection to close")
    assert evictions(m, "age") >= 1


def test_max_connection_age_waits_for_active_request(muxd, origin):
    """A request running when the connection reaches its age completes;
    then the connection closes and the next request opens a new one."""

    def handler(req, conn):
        if req.target == "/long":
            time.sleep(1.5)  # the origin's pace: the request outlasts max_connection_age
        conn.respond_json(req.as_json())

    o = origin(handler)
    m = muxd({"pool": {"max_connection_age": "1s"}})
    resp = get(m, o.url("/long"))
    assert resp.status == 200, resp
    assert resp.json()["conn"] == 0
    wait_until(lambda: o.active == 0, timeout=5, what="the aged connection to close once idle")
    resp = get(m, o.url("/next"))
    assert resp.json()["conn"] == 1
    assert evictions(m, "age") == 1


# --------------------------------------------------------------------------
# reasons dead and goaway


def test_origin_closing_idle_connection_counts_dead(muxd, origin):
    def handler(req, conn):
        conn.respond_json(req.as_json())
        if req.conn_id == 0:
            threading.Timer(0.3, shut, (conn.sock,)).start()

    def shut(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)  # the serving thread sees EOF and closes
        except OSError:
            pass

    o = origin(handler)
    m = muxd()
    resp = get(m, o.url("/a"))
    assert resp.status == 200, resp
    wait_until(lambda: evictions(m, "dead") == 1, timeout=5, what="eviction reason dead")
    assert pool_conns(m) == []
    resp = get(m, o.url("/b"))
    assert resp.status == 200, resp
    assert resp.json()["conn"] == 1
    assert m.metrics().value("muxd_upstream_retries_total") == 0


def test_nginx_keepalive_requests_goaway(muxd, tls_nginx_factory, pki):
    """nginx with keepalive_requests 2 sends GOAWAY on every second stream:
    muxd moves to a new connection each time, no request fails."""
    ng = tls_nginx_factory(http2=True, extra="keepalive_requests 2;")
    (ng.root / "1k").write_bytes(ONE_K)
    m = muxd(tls_conf(pki), args=["-v"])
    for i in range(5):
        resp = get(m, ng.url("/1k"))
        assert resp.status == 200, resp
        assert resp.body == ONE_K
    wait_until(lambda: len(ng.log_lines()) >= 5, timeout=5, what="nginx access log")
    assert set(ng.protocols()) == {"HTTP/2.0"}
    assert len(ng.connections()) == 3
    wait_until(lambda: evictions(m, "goaway") >= 2, timeout=5, what="goaway evictions")
    assert m.metrics().value("muxd_upstream_connections_opened_total", proto="h2") == 3


def test_goaway_on_idle_h2_connection(muxd, h2_origin, pki):
    """The scripted origin answers, then sends GOAWAY on the idle
    connection: muxd closes it (reason goaway), the next request opens a new
    one."""

    def handler(req):
        req.respond(200, [("content-type", "text/plain")], f"{req.path} conn={req.conn.id}\n")

    o = h2_origin(handler)
    m = muxd(tls_conf(pki), args=["-v"])
    resp = get(m, o.url("/a"))
    assert resp.status == 200, resp
    # the client has its answer and muxd lists the connection idle: now the GOAWAY
    wait_until(lambda: [c["state"] for c in pool_conns(m)] == ["idle"], timeout=10, what="the connection idle")
    o.conn(0).goaway()
    wait_until(lambda: o.conn(0).closed.is_set(), timeout=5, what="muxd to close the connection after GOAWAY")
    assert evictions(m, "goaway") == 1
    resp = get(m, o.url("/b"))
    assert resp.status == 200, resp
    assert resp.text.strip() == "/b conn=1"
    assert o.errors == []


# --------------------------------------------------------------------------
# pool keys and SIGHUP


def test_verify_off_route_never_shares_with_default_route(muxd, nginx_tls, pki):
    """nginx reached as `localhost` (route with verify = off) and as
    127.0.0.1 (default route, ca_file): two upstream connections, each
    reused only by its own route."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(tls_conf(pki, **{"route localhost": {"verify": "off"}}))
    urls = [f"https://localhost:{nginx_tls.port}/1k", nginx_tls.url("/1k")]
    for i in range(6):
        resp = get(m, urls[i % 2])
        assert resp.status == 200, resp
        assert resp.body == ONE_K
    wait_until(lambda: len(nginx_tls.log_lines()) >= 6, timeout=5, what="nginx access log")
    assert len(nginx_tls.connections()) == 2
    assert opened(m) == 2
    keys = sorted((c["host"], c["key"]) for c in pool_conns(m))
    assert [h for h, _ in keys] == ["127.0.0.1", "localhost"], keys
    assert "verify=1" in keys[0][1] and "verify=0" in keys[1][1], keys


def test_sighup_drains_idle_connection_of_changed_route(muxd, nginx_tls, origin, pki):
    """A reload that changes an origin's route (verify = off added) closes
    its idle connection; the next request opens a new one.  Connections of
    unchanged routes stay pooled."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    other = origin()
    on = tls_conf(pki)
    off = tls_conf(pki, **{f"route {nginx_tls.authority}": {"verify": "off"}})
    m = muxd(on, args=["-v"])
    assert get(m, nginx_tls.url("/1k")).status == 200
    assert get(m, other.url("/x")).status == 200
    assert pool_ports(m) == sorted([nginx_tls.port, other.port])
    m.reload(off)
    wait_reloaded(m, 1)
    wait_until(lambda: pool_ports(m) == [other.port], timeout=5, what="the stale TLS connection to close")
    assert other.active == 1, "a connection whose route did not change was closed"
    resp = get(m, nginx_tls.url("/1k"))
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    assert get(m, other.url("/y")).json()["conn"] == 0
    assert get(m, nginx_tls.url("/1k")).status == 200
    wait_until(lambda: len(nginx_tls.log_lines()) >= 3, timeout=5, what="nginx access log")
    assert len(nginx_tls.connections()) == 2
    assert opened(m) == 3
    assert [c["key"] for c in pool_conns(m) if c["port"] == nginx_tls.port][0].count("verify=0") == 1


def test_sighup_drains_active_connection_when_idle(muxd, h2_origin, pki):
    """An h2 connection busy with a slow stream when its route changes takes
    no new streams (a request after the reload opens a new connection), the
    slow stream completes, then the old connection is closed."""
    started = threading.Event()
    release = threading.Event()

    def handler(req):
        if req.path == "/slow":
            started.set()
            release.wait(30)  # the origin holds the stream open until the test has looked
        req.respond(200, [("content-type", "text/plain")], f"{req.path} conn={req.conn.id}\n")

    o = h2_origin(handler)
    m = muxd(tls_conf(pki), args=["-v"])
    with ThreadPoolExecutor(1) as ex:
        slow = ex.submit(get, m, o.url("/slow"), 20)
        try:
            assert started.wait(5)
            m.reload(tls_conf(pki, **{f"route {o.authority}": {"verify": "off"}}))
            wait_reloaded(m, 1)
            resp = get(m, o.url("/after"))
            assert resp.status == 200, resp
            assert resp.text.strip() == "/after conn=1", "a draining connection took a new stream"
            assert not o.conn(0).closed.is_set(), "the connection was closed under its running stream"
        finally:
            release.set()
        resp = slow.result(20)
    assert resp.status == 200, resp
    assert resp.text.strip() == "/slow conn=0"
    wait_until(lambda: o.conn(0).closed.is_set(), timeout=5, what="the drained connection to close once idle")
    assert not o.conn(1).closed.is_set()
    assert o.connections == 2
    assert o.errors == []


# --------------------------------------------------------------------------
# out of file descriptors


def test_emfile_200_clients_with_64_fds(muxd, origin):
    """muxd with RLIMIT_NOFILE 64 and 200 concurrent clients of a slow-ish
    origin: every client gets a whole 200 or a clean 503 (or is accepted
    later), most get 200 (accepting pauses while fewer than max(16, 10 %) of
    the descriptors are free, so clients leave room for their upstream
    connections), muxd does not spin, and full service follows."""
    o = origin(sleepy_handler(0.05))
    m = muxd(
        {"pool": {"max_h1_per_origin": 1000, "connect_timeout": "5s"}},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    with open(f"/proc/{m.pid}/limits") as f:
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["64", "64"] for line in f)

    def client(i):
        try:
            return get(m, o.url(f"/c{i}"), timeout=30)
        except Exception as e:  # noqa: BLE001 - reported below
            return e

    cpu0, t0 = cpu_seconds(m.pid), time.monotonic()
    results = concurrently(200, client, timeout=60)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(m.pid) - cpu0
    statuses = {}
    for r in results:
        key = type(r).__name__ if isinstance(r, Exception) else r.status
        statuses[key] = statuses.get(key, 0) + 1
    print(f"200 clients in {wall:.2f}s, muxd cpu {cpu:.2f}s: {statuses}")
    assert m.proc.poll() is None, f"muxd exited with {m.proc.returncode}"
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception) or r.status not in (200, 503)]
    assert not bad, f"{len(bad)} clients got neither 200 nor 503: {bad[:5]}; all: {statuses}"
    for i, r in enumerate(results):
        if r.status == 200:
            assert r.json()["target"] == f"/c{i}"
    assert statuses.get(200, 0) >= 140, f"most clients should get 200 (descriptor reserve): {statuses}"
    if not SANITIZE:
        assert cpu < 2 * wall + 0.5, f"muxd used {cpu:.2f}s CPU in {wall:.2f}s"

    # no spinning once the load is gone
    idle0 = cpu_seconds(m.pid)
    time.sleep(1.0)  # the measuring interval (nothing to wait for: muxd should do nothing)
    idle = cpu_seconds(m.pid) - idle0
    assert idle < 0.2, f"muxd used {idle:.2f}s CPU in 1s without load"

    # full service afterwards
    for i in range(20):
        resp = get(m, o.url(f"/after{i}"), timeout=10)
        assert resp.status == 200, f"request {i} after the load: {resp}"
        assert resp.json()["target"] == f"/after{i}"
    assert m.proc.poll() is None
    wait_until(lambda: m.metrics().value("muxd_client_connections") == 1, timeout=5,
               what="client connections to be released (only the /metrics one left)")


def test_descriptor_shortage_closes_oldest_idle_clients_first(muxd, origin):
    """RLIMIT_NOFILE 64: keep-alive clients that each made one request and
    then sit idle would take every descriptor.  Before free descriptors fall
    below the reserve, muxd closes the connections idle longest, so every
    new client is still accepted and served, and the ones closed are the
    oldest."""
    o = origin()
    m = muxd(
        {"intercept": {"enabled": "off"}},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    clients = []

    def closed(s):
        s.setblocking(False)
        try:
            return s.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    try:
        for i in range(80):
            s = connect(m.port, timeout=10)
            clients.append(s)
            s.sendall(proxy_request("GET", o.url(f"/idle{i}")))
            resp = HTTPReader(s).read_response()
            assert resp.status == 200, f"client {i}: {resp}"
        wait_until(lambda: closed(clients[0]), timeout=5, what="the oldest idle client to be closed")
        state = [closed(s) for s in clients]
        assert not state[-1], "the newest client was closed"
        first_open = state.index(False)
        assert not any(state[first_open:]), f"not the oldest were closed: {state}"
        assert first_open >= 80 - 64, state
        # the daemon still serves
        assert get(m, o.url("/after")).status == 200
        assert m.proc.poll() is None
    finally:
        for s in clients:
            s.close()
