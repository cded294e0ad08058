"""A small blocking HTTP/2 client (python3-h2) inside muxd's interception,
for tests that need an HTTP/2 *client* with exact control over what it sends
(an ``expect: 100-continue`` that curl would never send over HTTP/2) and
when it reads (one DATA frame at a time, with the time each arrived).

    c = H2TunnelClient(m, "localhost:8443")     # CONNECT, TLS, ALPN h2
    st = c.send_request("GET", "/x")            # -> H2Stream
    c.until(lambda: st.ended)                   # pump until a condition
    st.status, st.headers (support.Headers), st.body, st.interim, st.chunks

Every DATA frame is given back to the flow-control windows at once.  The
client goes on reading after a GOAWAY from muxd (streams it opened before
it still finish); ``c.goaway`` records its error code.
"""

import ssl
import time

import h2.config
import h2.connection
import h2.events

from support import Headers, open_tunnel, recv_within


class H2Stream:
    def __init__(self, sid):
        self.sid = sid
        self.interim = []    # statuses of 1xx heads
        self.status = None   # the final head's status
        self.headers = None  # ... and its fields (support.Headers, no pseudo-fields)
        self.chunks = []     # (monotonic time, bytes) of every DATA frame
        self.trailers = None
        self.ended = False
        self.reset = None    # the RST_STREAM error code

    @property
    def body(self):
        return b"".join(c for _, c in self.chunks)

    @property
    def done(self):
        return self.ended or self.reset is not None

    def __repr__(self):
        return (f"<H2Stream {self.sid} {self.status} {self.headers!r} {self.body[:80]!r} "
                f"interim={self.interim} ended={self.ended} reset={self.reset}>")


class _Conn(h2.connection.H2Connection):
    """h2 4.1 closes its whole state machine on a GOAWAY; a draining
    server's open streams still finish, so go on reading."""

    def _receive_goaway_frame(self, frame):
        self.goaway_code = frame.error_code
        return [], []


class H2TunnelClient:
    def __init__(self, m, authority, timeout=10.0):
        resp, reader = open_tunnel(m.port, authority, timeout=timeout)
        assert resp.status == 200, resp
        assert not reader.buf
        ctx = ssl.create_default_context(cafile=str(m.state_dir / "ca.pem"))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(reader.sock, server_hostname=authority.rsplit(":", 1)[0])
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.authority = authority
        self.timeout = timeout
        self.conn = _Conn(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.goaway_code = None
        self.streams = {}
        self.closed = False
        self.conn.initiate_connection()
        self.flush()

    @property
    def goaway(self):
        return self.conn.goaway_code

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_request(self, method, path, headers=(), end_stream=True):
        sid = self.conn.get_next_available_stream_id()
        st = self.streams[sid] = H2Stream(sid)
        self.conn.send_headers(sid, [(":method", method), (":scheme", "https"),
                                     (":authority", self.authority), (":path", path),
                                     *headers], end_stream=end_stream)
        self.flush()
        return st

    def send_body(self, st, data, end_stream=True):
        """Send data on st as the windows allow (pumping for WINDOW_UPDATEs)."""
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(st.sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.until(lambda: self.conn.local_flow_control_window(st.sid) > 0 or st.done,
                           what="room in the flow-control window")
                if st.done:
                    return
                continue
            self.conn.send_data(st.sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end_stream:
            self.conn.end_stream(st.sid)
            self.flush()

    def pump(self, timeout=0.2):
        """Read what arrives within timeout; False once the connection is gone."""
        if self.closed:
            return False
        data = recv_within(self.sock, timeout)
        if data is None:
            self.closed = True
            return False
        if not data:
            return True
        now = time.monotonic()
        for ev in self.conn.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if st is None:
                continue
            if isinstance(ev, h2.events.InformationalResponseReceived):
                st.interim.append(int(dict(ev.headers)[":status"]))
            elif isinstance(ev, h2.events.ResponseReceived):
                st.status = int(dict(ev.headers)[":status"])
                st.headers = Headers((n, v) for n, v in ev.headers if not n.startswith(":"))
            elif isinstance(ev, h2.events.DataReceived):
                st.chunks.append((now, ev.data))
                self.conn.acknowledge_received_data(ev.flow_controlled_length, st.sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                st.trailers = Headers(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                st.reset = ev.error_code
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def until(self, pred, timeout=None, what="condition"):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout or self.timeout}s waiting for {what}")
            if not self.pump() and not pred():
                raise AssertionError(f"the connection closed while waiting for {what}")
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True
