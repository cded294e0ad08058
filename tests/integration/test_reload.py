"""A reload applies to upstream connections made after it.

An upstream connection takes what it runs with (response_timeout, the
window sizes) from the configuration current when it is made, and keeps
it: a SIGHUP changes nothing for a connection that is already open, idle
in the pool or busy, and everything for the next one.

The origin is the test's own keep-alive HTTP/1.1 server, which answers
/fast at once and holds /hold until the test lets it go.
"""

import threading
import time

from support import HTTPReader, connect, proxy_request, wait_until

ANSWER_WITHIN = 8.0  # generous: sanitizers, a busy machine


class HoldingOrigin:
    """A keep-alive HTTP/1.1 origin: every request (its connection number
    and path) is recorded; /hold is answered once release is set."""

    def __init__(self, stream_server):
        self.lock = threading.Lock()
        self.seen = []  # (connection number, path)
        self.holding = 0
        self.release = threading.Event()
        self.count = 0
        self.srv = stream_server(self.handle)

    def handle(self, sock):
        with self.lock:
            self.count += 1
            conn = self.count
        reader = HTTPReader(sock)
        try:
            while True:
                head = reader.read_until(b"\r\n\r\n").decode("latin-1")
                path = head.split(" ", 2)[1]
                with self.lock:
                    self.seen.append((conn, path))
                body = b"fast"
                if path == "/hold":
                    with self.lock:
                        self.holding += 1
                    self.release.wait(30)
                    body = b"held"
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except Exception:  # noqa: BLE001 - EOF or reset ends the connection
            return

    def url(self, path):
        return f"http://{self.srv.authority}{path}"


def get(m, url, timeout=ANSWER_WITHIN + 20):
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url, headers=[("Connection", "close")]))
        return HTTPReader(s).read_response()


def conf(response_timeout):
    return {"pool": {"response_timeout": response_timeout}}


def test_reload_changes_response_timeout_of_new_connections_only(muxd, stream_server):
    """A connection opened under response_timeout = 60s keeps it after a
    reload to 1s (its held request is answered), while a connection opened
    after the reload times out after 1s (504)."""
    origin = HoldingOrigin(stream_server)
    m = muxd(conf("60s"))
    resp = get(m, origin.url("/fast"))
    assert (resp.status, resp.body) == (200, b"fast"), resp
    wait_until(lambda: [c for c in m.admin("/status.json").json()["connections"]
                        if c["port"] == origin.srv.port and c["state"] == "idle"],
               timeout=5, what="the connection to be idle in the pool")
    m.reload(conf("1s"), wait=True)

    # the idle connection, made before the reload, takes the held request
    old = {}
    t = threading.Thread(target=lambda: old.setdefault("resp", get(m, origin.url("/hold"))))
    t.start()
    try:
        wait_until(lambda: origin.holding == 1, timeout=5, what="the held request at the origin")
        assert origin.seen[-1] == (1, "/hold"), origin.seen

        # a second one needs a new connection: made after the reload, 1s
        t0 = time.monotonic()
        resp = get(m, origin.url("/hold"))
        elapsed = time.monotonic() - t0
        assert resp.status == 504, resp
        assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f}s"
        assert origin.seen[-1] == (2, "/hold"), origin.seen
        # the first request has been silent longer than that: it still waits
        assert "resp" not in old, old
    finally:
        origin.release.set()
        t.join(ANSWER_WITHIN + 20)
    resp = old.get("resp")
    assert resp is not None, "the request on the old connection was not answered"
    assert (resp.status, resp.body) == (200, b"held"), resp
