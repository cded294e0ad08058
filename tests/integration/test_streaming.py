"""Streamed responses are relayed as they arrive: a server-sent events origin
sends one event, then waits until the test tells it to go on (the test does
so only once the first event has reached the client), then sends more.  The
first event must reach an HTTP/1.1 client while the origin is still waiting,
within a generous deadline: muxd must not sit on a small piece of body until
more arrives (64 KiB, the end of the response, a timer).  The measured delay
is printed (``pytest -rP`` shows it) and recorded as a junit property.

Clients: absolute-form requests over plain HTTP (``http://`` to an HTTP/1.1
origin, ``https://`` to a TLS origin), HTTP/1.1 inside intercepted TLS, and
HTTP/2 inside intercepted TLS (python-h2, h2client.py: the first event must
come in a DATA frame of its own, before the origin sends the second).
Upstreams: HTTP/1.1 (a python origin: a chunk per event, all events in one
chunk written as they come, delimited by close, or with a Content-Length) and HTTP/2 (python-h2, h2origin.py) and HTTP/3 (tests/h3origin/h3origin.c:
its /sse sends the next event only when the test writes a line to its
stdin; muxd reaches it through a pre-loaded Alt-Svc cache).
"""

import socket
import ssl
import threading
import time

import pytest

from h2client import H2TunnelClient
from h3origin import h3_only_muxd
from support import (
    LOCALHOST,
    HTTPReader,
    connect,
    open_tunnel,
    proxy_request,
)

DEADLINE = 10.0  # generous: the point is "before the origin sends more"
EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


class Stream:
    """What the origin and the test share about one streamed response."""

    def __init__(self):
        self.first_sent = threading.Event()
        self.first_sent_at = None
        self.go = threading.Event()  # set by the test: send the rest
        self.rest_sent = threading.Event()
        self.errors = []

    def sending_first(self):
        """Called just before the first event goes out (the delay counts from here)."""
        self.first_sent_at = time.monotonic()

    def sent_first(self):
        self.first_sent.set()

    def wait_go(self):
        if not self.go.wait(DEADLINE * 3):
            self.errors.append("the test never said go")
            return False
        return True


class H1StreamOrigin:
    """An HTTP/1.1 origin (plain, or TLS with the test PKI) whose every
    response is a stream: the head and EVENTS[0], then (after stream.go)
    the other events, framed as chunked, close-delimited or with a
    Content-Length."""

    def __init__(self, framing, pki=None):
        self.framing = framing
        self.streams = []
        self.lock = threading.Lock()
        self.ctx = None
        if pki:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(pki.leaf_cert), str(pki.leaf_key))
            self.ctx.set_alpn_protocols(["http/1.1"])
        self.listener = socket.create_server((LOCALHOST, 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def new_stream(self):
        s = Stream()
        with self.lock:
            self.streams.append(s)
        return s

    def _accept(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(DEADLINE * 4)
        try:
            if self.ctx:
                sock = self.ctx.wrap_socket(sock, server_side=True)
            reader = HTTPReader(sock)
            reader.read_until(b"\r\n\r\n")
            with self.lock:
                stream = self.streams.pop(0)
            head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            if self.framing in ("chunked", "one_chunk"):
                head += "Transfer-Encoding: chunked\r\n"
            elif self.framing == "length":
                head += f"Content-Length: {sum(map(len, EVENTS))}\r\n"
            else:
                head += "Connection: close\r\n"

            def frame(data):
                return b"%x\r\n%s\r\n" % (len(data), data) if self.framing == "chunked" else data

            if self.framing == "one_chunk":  # all events in one chunk, written as they come
                first = b"%x\r\n" % sum(map(len, EVENTS)) + EVENTS[0]
            else:
                first = frame(EVENTS[0])
            stream.sending_first()
            sock.sendall(head.encode() + b"\r\n" + first)
            stream.sent_first()
            if not stream.wait_go():
                return
            for ev in EVENTS[1:]:
                sock.sendall(ev if self.framing == "one_chunk" else frame(ev))
            if self.framing == "one_chunk":
                sock.sendall(b"\r\n0\r\n\r\n")
            elif self.framing == "chunked":
                sock.sendall(b"0\r\n\r\n")
            stream.rest_sent.set()
            if self.framing == "close":
                return  # the close ends the body
            reader.read_until(b"\r\n\r\n")  # until muxd closes or sends more
        except (OSError, ValueError, ssl.SSLError, Exception):  # noqa: BLE001
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def h1_stream_origin():
    origins = []

    def start(framing, pki=None):
        o = H1StreamOrigin(framing, pki)
        origins.append(o)
        return o

    yield start
    for o in origins:
        o.stop()


def h2_stream_handler(streams):
    """h2origin handler: the head and EVENTS[0], then (after go) the rest."""

    def handler(req):
        stream = streams.pop(0)
        req.send_head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")])
        stream.sending_first()
        req.send_data(EVENTS[0])
        stream.sent_first()
        if not stream.wait_go():
            return
        for ev in EVENTS[1:-1]:
            req.send_data(ev)
        req.send_data(EVENTS[-1], end_stream=True)
        stream.rest_sent.set()

    return handler


def open_client(m, client, scheme, authority):
    """A socket to send the request on and the request's target."""
    if client == "absolute":
        return connect(m.port, timeout=DEADLINE), f"{scheme}://{authority}/events"
    resp, reader = open_tunnel(m.port, authority)
    assert resp.status == 200, resp
    ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(reader.sock, server_hostname="localhost"), "/events"


def first_event_then_rest(record_property, sock, target, authority, stream, label):
    """Send GET target; check the first event arrives before the origin was
    told to send the second; then read the rest. Returns the delay (s)."""
    with sock:
        if target.startswith("/"):
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\r\n".encode())
        else:
            sock.sendall(proxy_request("GET", target, headers=[("Accept", "text/event-stream")]))
        sock.settimeout(DEADLINE)
        reader = HTTPReader(sock)
        version, status, reason, headers = reader.read_head()
        assert status == 200, (status, reason, headers)
        body = bytearray()
        pieces = reader.iter_body(headers, status)
        try:
            while not body.startswith(EVENTS[0]):
                body += next(pieces)
        except socket.timeout:
            pytest.fail(f"{label}: the first event did not reach the client within {DEADLINE}s "
                        f"(have {bytes(body)!r}); the origin is waiting to send more")
        arrived = time.monotonic()
        assert stream.first_sent.wait(DEADLINE)  # the origin's sendall may return after the client read
        assert not stream.go.is_set() and not stream.rest_sent.is_set()
        delay = arrived - stream.first_sent_at
        print(f"{label}: first event reached the client {delay * 1000:.1f} ms after the origin sent it")
        record_property(f"first_event_delay_ms[{label}]", round(delay * 1000, 1))
        stream.go.set()
        for piece in pieces:
            body += piece
        assert bytes(body) == b"".join(EVENTS)
        assert not stream.errors, stream.errors
        return delay


def first_event_then_rest_h2(record_property, m, authority, stream, label):
    """The same over HTTP/2: one stream of an intercepted h2 connection."""
    c = H2TunnelClient(m, authority, timeout=DEADLINE)
    try:
        st = c.send_request("GET", "/events", [("accept", "text/event-stream")])
        try:
            c.until(lambda: st.done or st.body.startswith(EVENTS[0]), what="the first event")
        except AssertionError as e:
            pytest.fail(f"{label}: the first event did not reach the client within {DEADLINE}s "
                        f"(have {st!r}; {e}); the origin is waiting to send more")
        assert st.status == 200 and not st.done, st
        arrived = st.chunks[-1][0]
        assert stream.first_sent.wait(DEADLINE)
        assert not stream.go.is_set() and not stream.rest_sent.is_set()
        delay = arrived - stream.first_sent_at
        print(f"{label}: first event reached the client {delay * 1000:.1f} ms after the origin sent it")
        record_property(f"first_event_delay_ms[{label}]", round(delay * 1000, 1))
        stream.go.set()
        c.until(lambda: st.done, what="the rest of the stream")
        assert st.ended and st.reset is None, st
        assert st.body == b"".join(EVENTS)
        assert not stream.errors, stream.errors
        return delay
    finally:
        c.close()


CLIENTS = ["absolute", "intercepted", "h2"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("framing", ["chunked", "one_chunk", "close", "length"])
def test_h1_upstream_stream_reaches_client_at_once(muxd, pki, h1_stream_origin, record_property, client, framing):
    tls = client != "absolute"
    o = h1_stream_origin(framing, pki if tls else None)
    conf = {"route *": {"ca_file": pki.ca_cert}}
    if tls:
        conf["intercept"] = {"ports": o.port}
    m = muxd(conf)
    authority = f"localhost:{o.port}" if tls else f"{LOCALHOST}:{o.port}"
    stream = o.new_stream()
    if client == "h2":
        first_event_then_rest_h2(record_property, m, authority, stream, f"h1 {framing} -> {client}")
        return
    sock, target = open_client(m, client, "http", authority)
    first_event_then_rest(record_property, sock, target, authority, stream, f"h1 {framing} -> {client}")


@pytest.mark.parametrize("client", CLIENTS)
def test_h2_upstream_stream_reaches_client_at_once(muxd, pki, h2_origin, record_property, client):
    streams = []
    o = h2_origin(h2_stream_handler(streams))
    conf = {"route *": {"ca_file": pki.ca_cert}, "intercept": {"ports": o.port}}
    m = muxd(conf)
    authority = f"localhost:{o.port}"
    stream = Stream()
    streams.append(stream)
    if client == "h2":
        first_event_then_rest_h2(record_property, m, authority, stream, f"h2 -> {client}")
    else:
        sock, target = open_client(m, client, "https", authority)
        first_event_then_rest(record_property, sock, target, authority, stream, f"h2 -> {client}")
    assert o.connections == 1 and o.conn(0).requests, "not served over HTTP/2"


class H3Go:
    """Stream.go for h3origin: set() has the origin send the other events
    and end the stream."""

    def __init__(self, o):
        self.o = o
        self.done = False

    def set(self):
        for ev in EVENTS[1:]:
            self.o.trigger(ev[len(b"data: "):].strip().decode())
        self.o.trigger("end")
        self.done = True

    def is_set(self):
        return self.done


@pytest.mark.parametrize("client", CLIENTS)
def test_h3_upstream_stream_reaches_client_at_once(muxd, pki, h3_origin, record_property, client):
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o, args=())
    authority = f"localhost:{o.port}"
    stream = Stream()
    stream.go = H3Go(o)
    sock, target = open_client(m, client, "https", authority)
    # the origin sends the first event as soon as the request arrives: the
    # delay counted from the request (an upper bound, QUIC handshake included)
    stream.sending_first()
    stream.sent_first()
    target = target.replace("/events", "/sse?first=one")
    first_event_then_rest(record_property, sock, target, authority, stream, f"h3 -> {client}")
    assert [p for _, _, p in o.requests()] == ["/sse?first=one"], "not served over HTTP/3"
