"""The shared upstream pool: reuse across client processes, the stale
connection retry, origins closing idle connections, per-origin limits,
/metrics and the access log."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

from support import curl, parse_access_log, pattern_bytes, wait_until


def test_forty_curl_processes_share_connections(muxd, nginx):
    body = pattern_bytes(10000, seed=1)
    (nginx.root / "f.bin").write_bytes(body)
    m = muxd()
    for i in range(40):
        r = curl(m.port, nginx.url("/f.bin"))
        assert r.returncode == 0, r.stderr
        assert r.stdout == body, f"request {i}: body differs"
    wait_until(lambda: len(nginx.log_lines()) >= 40, timeout=5, what="nginx access log")
    assert len(nginx.log_lines()) == 40
    conns = nginx.connections()
    assert len(conns) <= 2, f"nginx saw {len(conns)} connections"


def test_stale_connection_retried_once(muxd, origin):
    def handler(req, conn):
        if req.index == 0:
            conn.respond_json(req.as_json())  # keep-alive
        else:
            conn.close()  # second request on this connection: close without answering

    o = origin(handler)
    m = muxd()
    for i in range(2):
        r = curl(m.port, o.url(f"/r{i}"))
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)
        assert seen["target"] == f"/r{i}"
    # the second request went to connection 0 first, then was retried on 1
    assert [(q.conn_id, q.index, q.target) for q in o.requests] == [(0, 0, "/r0"), (0, 1, "/r1"), (1, 0, "/r1")]
    metrics = m.metrics()
    assert metrics.value("muxd_upstream_retries_total") == 1
    assert metrics.value("muxd_upstream_connections_opened_total", proto="h1") == 2


def test_origin_closing_idle_connection_is_silent(muxd, origin):
    def handler(req, conn):
        conn.respond_json(req.as_json())  # no "Connection: close": looks reusable
        conn.close()

    o = origin(handler)
    m = muxd()
    r = curl(m.port, o.url("/first"))
    assert r.returncode == 0, r.stderr

    # muxd notices the close: the connection leaves the pool
    def gone():
        metrics = m.metrics()
        return (metrics.value("muxd_upstream_connections", proto="h1", state="idle") == 0
                and metrics.value("muxd_upstream_connections", proto="h1", state="active") == 0)

    wait_until(gone, timeout=5, what="idle connection to leave the pool")
    r = curl(m.port, o.url("/second"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["conn"] == 1


def test_origin_closing_connections_back_to_back(muxd, origin):
    """Requests that may race the origin's close still all succeed."""

    def handler(req, conn):
        conn.respond_json(req.as_json())
        conn.close()

    o = origin(handler)
    m = muxd()
    for i in range(10):
        r = curl(m.port, o.url(f"/n{i}"))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["target"] == f"/n{i}"


def test_max_h1_per_origin_queues_requests(muxd, origin):
    def handler(req, conn):
        time.sleep(0.2)  # the origin's pace: the six requests queue for the one connection
        conn.respond_json(req.as_json())

    o = origin(handler)
    m = muxd({"pool": {"max_h1_per_origin": 1}})
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: curl(m.port, o.url(f"/q{i}")), range(6)))
    for i, r in enumerate(results):
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["target"] == f"/q{i}"
    assert o.connections == 1
    assert len(o.requests) == 6


REQUIRED_METRICS = {
    "muxd_requests_total", "muxd_upstream_connections_opened_total", "muxd_upstream_connections",
    "muxd_upstream_reuses_total", "muxd_upstream_retries_total", "muxd_pool_evictions_total",
    "muxd_client_connections",
}


def test_metrics_count_requests_connections_reuses(muxd, origin):
    o = origin()
    m = muxd()
    before = m.metrics()
    for i in range(5):
        r = curl(m.port, o.url(f"/m{i}"))
        assert r.returncode == 0, r.stderr
    after = m.metrics()
    assert REQUIRED_METRICS <= after.names(), f"missing: {REQUIRED_METRICS - after.names()}"

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("muxd_requests_total", proto="h1") == 5
    assert delta("muxd_upstream_connections_opened_total", proto="h1") == 1
    assert delta("muxd_upstream_reuses_total") == 4
    assert delta("muxd_upstream_retries_total") == 0
    assert after.value("muxd_upstream_connections", proto="h1", state="idle") == 1
    assert after.value("muxd_upstream_connections", proto="h1", state="active") == 0
    assert after.value("muxd_client_connections") >= 1  # the /metrics request itself
    assert o.connections == 1


def test_access_log_new_and_reused(muxd, origin, tmp_path):
    log = tmp_path / "access.log"
    o = origin()
    m = muxd({"muxd": {"access_log": str(log)}})
    for path in ("/a", "/b"):
        r = curl(m.port, o.url(path), "-o", "/dev/null")
        assert r.returncode == 0, r.stderr
    lines = wait_until(lambda: len(parse_access_log(log)) >= 2 and parse_access_log(log), timeout=5, what="access log lines")
    assert len(lines) == 2, lines
    for line, path, conn in zip(lines, ("/a", "/b"), ("new", "reused")):
        assert "bad" not in line, f"access log line not in the documented format: {line['bad']!r}"
        assert line["client"].startswith("127.0.0.1")
        assert line["method"] == "GET"
        assert line["url"].endswith(path)
        assert line["status"] == "200"
        assert line["proto"] == "h1"
        assert line["conn"] == conn
        assert int(line["bytes_out"]) > 0
