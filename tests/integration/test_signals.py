"""Signals: SIGHUP reloads the configuration without losing requests (a bad
file keeps the old one); SIGTERM/SIGINT drain in-flight exchanges and exit 0."""

import signal
import socket
import threading
import time

import pytest
import requests

from support import HTTPReader, connect, pattern_bytes, proxy_request, sha256, wait_until

BAD_CONF = "[muxd]\nshutdown_timeout = 5s\nvia = maybe\n"  # error on line 3


def via_of(m, url):
    """The Via of a response fetched on a fresh client connection."""
    with requests.Session() as s:
        s.trust_env = False
        r = s.get(url, proxies={"http": m.proxy_url()}, timeout=10)
        assert r.status_code == 200
        return r.headers.get("Via")


class Load:
    """Client threads requesting url through muxd until stopped; half keep
    their client connection alive, half open a new one per request."""

    def __init__(self, m, url, expected, threads=4):
        self.url, self.expected = url, expected
        self.proxies = {"http": m.proxy_url()}
        self.stopping = threading.Event()
        self.failures = []
        self.done = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 0,)) for i in range(threads)]

    def run(self, keep_alive):
        session = None
        while not self.stopping.is_set():
            if session is None or not keep_alive:
                if session is not None:
                    session.close()
                session = requests.Session()
                session.trust_env = False
            try:
                r = session.get(self.url, proxies=self.proxies, timeout=10)
                ok = r.status_code == 200 and r.content == self.expected
                problem = None if ok else f"status {r.status_code}, {len(r.content)} bytes"
            except requests.RequestException as e:
                problem = repr(e)
            with self.lock:
                self.done += 1
                if problem:
                    self.failures.append(problem)
        session.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(30)


def test_sighup_under_load_loses_no_request(muxd, nginx):
    body = pattern_bytes(1024, seed=5)
    (nginx.root / "1k").write_bytes(body)
    url = nginx.url("/1k")
    m = muxd({"muxd": {"via": "on"}})
    def load_progresses(n=3):
        """Until n more requests of the load have completed."""
        done = load.done
        wait_until(lambda: load.done >= done + n, timeout=10, what=f"{n} more requests of the load")

    with Load(m, url, body) as load:
        load_progresses()
        for conf in ({"muxd": {"via": "off"}}, {"muxd": {"via": "on"}}, BAD_CONF,
                     {"muxd": {"via": "off"}}, {"pool": {"idle_timeout": "5s"}}, {"muxd": {"via": "off"}}):
            m.reload(conf, wait=True)
            load_progresses()
        # the last reload (via = off) takes effect
        wait_until(lambda: via_of(m, url) is None, timeout=10, what="via = off after reload")
        load_progresses()
    assert m.proc.poll() is None, "muxd died during reloads"
    assert load.failures == [], f"{len(load.failures)} of {load.done} requests failed: {load.failures[:5]}"
    assert load.done >= 20, f"only {load.done} requests completed"


def test_sighup_bad_config_keeps_old_one(muxd, nginx):
    (nginx.root / "x").write_bytes(b"x")
    url = nginx.url("/x")
    m = muxd({"muxd": {"via": "off"}})
    assert via_of(m, url) is None
    m.reload(BAD_CONF)
    wait_until(lambda: f"{m.conf_path}:3:" in m.log(), timeout=10, what="the reload error to be logged")
    assert m.proc.poll() is None
    assert via_of(m, url) is None, "the bad configuration was applied"
    # listeners and the old config survive; a good file is then picked up
    m.reload({"muxd": {"via": "on"}})
    wait_until(lambda: via_of(m, url) == m.via_token(), timeout=10, what="via = on after a good reload")


def slow_download(size, pieces, delay):
    payload = pattern_bytes(size, seed=9)
    step = size // pieces

    def handler(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for i in range(0, size, step):
            conn.send(payload[i:i + step])
            time.sleep(delay)  # the origin's pace: the download is still running when the signal comes

    return payload, handler


def refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_inflight_download(muxd, origin):
    payload, handler = slow_download(2 * 1024 * 1024, 32, 0.08)  # ~2.5 s
    o = origin(handler)
    m = muxd({"muxd": {"shutdown_timeout": "30s"}})
    result = {}

    def client():
        try:
            with connect(m.port, timeout=30) as s:
                s.sendall(proxy_request("GET", o.url("/slow")))
                result["resp"] = HTTPReader(s).read_response()
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=client)
    t.start()
    wait_until(lambda: o.requests, timeout=10, what="the download to start")
    m.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(m.port), timeout=5, what="muxd to stop accepting")
    t.join(30)
    assert "error" not in result, f"download failed: {result.get('error')!r}"
    resp = result["resp"]
    assert resp.status == 200
    assert len(resp.body) == len(payload) and sha256(resp.body) == sha256(payload)
    assert m.proc.wait(15) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0(muxd, sig):
    m = muxd()
    m.metrics()  # it serves
    m.proc.send_signal(sig)
    assert m.proc.wait(15) == 0
