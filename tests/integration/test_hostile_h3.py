"""Hostile peers at the QUIC datagram level (issue 16): an origin, or anyone
who can send from its address, floods muxd's QUIC socket with datagrams that
are not (or not valid) QUIC packets of the connection.

There is no python QUIC stack on the machine, so the origin is the real one
(gtlsserver, as in test_h3.py) behind a scripted UDP relay that forwards both
ways and, on demand, injects datagrams towards muxd from the origin's address
(the only address muxd's connected UDP socket accepts): random garbage,
short-header packets for connection IDs muxd never issued, spoofed stateless
resets, and Version Negotiation packets after the handshake.  An origin that
answers the handshake with nothing but such datagrams (a spoofed Version
Negotiation listing no version muxd speaks, or garbage) is a UDP peer of its
own.  Each test asserts muxd alive, the attacked client's answer (the request
still goes over QUIC, or falls back to TCP without the client noticing), a
bystander's correct answer, and RSS bounded after the attack.
"""

import os
import selectors
import socket
import struct
import threading

import pytest
from test_h3 import altsvc_origin, h3_conf, metric, which

from support import LOCALHOST, SANITIZE, free_udp_port, wait_until

RSS_GROWTH_LIMIT_KIB = 2048


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class UDPRelay:
    """Forwards datagrams between muxd (on LOCALHOST:.port) and a QUIC origin;
    inject(datagrams) sends datagrams to every muxd address seen, from .port."""

    def __init__(self, target_port):
        self.target = (LOCALHOST, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, free_udp_port()))
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.up = {}  # muxd address -> socket towards the origin
        self.lock = threading.Lock()
        self.stopped = False
        self.forwarded = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            for key, _ in self.sel.select(0.1):
                try:
                    data, addr = key.fileobj.recvfrom(65536)
                except OSError:
                    continue
                if key.data is None:  # from muxd
                    with self.lock:
                        up = self.up.get(addr)
                        if up is None:
                            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            up.connect(self.target)
                            self.up[addr] = up
                            self.sel.register(up, selectors.EVENT_READ, addr)
                    up.send(data)
                else:  # from the origin, for muxd address key.data
                    self.forwarded += 1
                    self.sock.sendto(data, key.data)

    def peers(self):
        with self.lock:
            return list(self.up)

    def inject(self, datagrams):
        sent = 0
        for addr in self.peers():
            for d in datagrams:
                try:
                    self.sock.sendto(d, addr)
                    sent += 1
                except BlockingIOError:
                    pass
        return sent

    def stop(self):
        self.stopped = True
        self.thread.join(5)
        for s in self.up.values():
            s.close()
        self.sock.close()


@pytest.fixture
def udp_relay():
    relays = []

    def start(target_port):
        r = UDPRelay(target_port)
        relays.append(r)
        return r

    yield start
    for r in relays:
        r.stop()


def garbage(n, size=1200):
    return [os.urandom(size) for _ in range(n)]


def short_headers_unknown_cid(n):
    """Short-header (1-RTT) packets: fixed bit set, random DCID and payload."""
    return [bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + os.urandom(60 + i % 1100) for i in range(n)]


def fake_stateless_resets(n):
    """What a stateless reset looks like (RFC 9000 10.3): short header,
    random bytes, 16 bytes of 'token' at the end; the tokens are not the
    origin's, so muxd must not close the connection."""
    return [bytes([0x40 | (os.urandom(1)[0] & 0x3F)]) + os.urandom(40) + os.urandom(16) for _ in range(n)]


def version_negotiation(dcid=b"", scid=b"", versions=(0x1A2A3A4A, 0xFF00001D)):
    """A Version Negotiation packet (RFC 9000 17.2.1) listing versions muxd does not speak."""
    first = 0x80 | (os.urandom(1)[0] & 0x7F)
    return (bytes([first]) + b"\0\0\0\0" + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
            + b"".join(struct.pack("!I", v) for v in versions))


def quic_via_relay(muxd, tls_nginx_factory, h3_server, pki, udp_relay):
    """nginx advertising h3 on a relay in front of gtlsserver; muxd learned
    it and its QUIC connection goes through the relay.  Returns (m, ng, relay)."""
    q = h3_server()
    (q.root / "which").write_text("quic\n")
    relay = udp_relay(q.port)
    ng = tls_nginx_factory(http2=True, extra=f"add_header Alt-Svc 'h3=\":{relay.port}\"; ma=3600' always;\n")
    (ng.root / "which").write_text("tcp\n")
    m = muxd(h3_conf(pki, ng.port), args=["-v"])
    assert which(m, ng) == "tcp"
    assert which(m, ng) == "quic"
    assert relay.peers(), "muxd's QUIC connection did not go through the relay"
    return m, ng, relay


def assert_rss_bounded(m, before, what):
    after = rss_kib(m.pid)
    print(f"muxd RSS before {what}: {before} KiB, after: {after} KiB")
    if not SANITIZE:
        assert after < before + RSS_GROWTH_LIMIT_KIB, f"RSS grew {after - before} KiB under {what}"


@pytest.mark.parametrize("attack", ["garbage", "unknown_cids", "stateless_resets", "version_negotiation"])
def test_h3_datagram_flood_on_an_established_connection_is_ignored(muxd, tls_nginx_factory, h3_server, pki,
                                                                   udp_relay, attack):
    """20 000 datagrams from the origin's address that are not packets of the
    connection (garbage, short headers for unknown connection IDs, spoofed
    stateless resets, Version Negotiation after the handshake) are dropped:
    the connection keeps serving over QUIC, nothing is retried over TCP,
    muxd's memory does not grow."""
    m, ng, relay = quic_via_relay(muxd, tls_nginx_factory, h3_server, pki, udp_relay)
    before = rss_kib(m.pid)
    make = {
        "garbage": lambda n: garbage(n),
        "unknown_cids": short_headers_unknown_cid,
        "stateless_resets": fake_stateless_resets,
        "version_negotiation": lambda n: [version_negotiation(os.urandom(8), os.urandom(8)) for _ in range(n)],
    }[attack]
    sent = 0
    for _ in range(20):
        sent += relay.inject(make(1000))
        assert which(m, ng) == "quic"  # the attacked connection, while it is flooded
    assert sent >= 15000, f"only {sent} datagrams injected"
    assert m.proc.poll() is None, "muxd died"
    answers = [which(m, ng) for _ in range(3)]
    assert answers == ["quic"] * 3, f"after the flood requests went {answers}"
    mm = m.metrics()
    assert mm.sum("muxd_upstream_connections_opened_total", proto="h3") == 1, "the QUIC connection was replaced"
    assert mm.sum("muxd_h3_fallbacks_total") == 0
    assert_rss_bounded(m, before, attack)


class FakeQuicOrigin:
    """A UDP 'origin' that never completes a handshake: it answers each
    datagram from muxd with `reply(datagram)` (a list of datagrams)."""

    def __init__(self, reply):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, free_udp_port()))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.received = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            try:
                data, addr = self.sock.recvfrom(65536)
            except (socket.timeout, OSError):
                continue
            self.received += 1
            for d in self.reply(data):
                try:
                    self.sock.sendto(d, addr)
                except OSError:
                    pass

    def stop(self):
        self.stopped = True
        self.thread.join(5)
        self.sock.close()


def initial_cids(data):
    """DCID and SCID of a long-header packet."""
    if len(data) < 7 or not data[0] & 0x80:
        return b"", b""
    dl = data[5]
    dcid = data[6:6 + dl]
    sl = data[6 + dl]
    return dcid, data[7 + dl:7 + dl + sl]


def vn_reply(data):
    dcid, scid = initial_cids(data)
    return [version_negotiation(dcid=scid, scid=dcid)]  # echoed, as a real VN would


def garbage_reply(data):
    return garbage(20, size=1200) + short_headers_unknown_cid(20)


@pytest.mark.parametrize("reply", [vn_reply, garbage_reply], ids=["version_negotiation", "garbage"])
def test_h3_origin_that_answers_the_handshake_with_junk_falls_back_to_tcp(muxd, tls_nginx_factory, pki, reply):
    """The advertised h3 endpoint answers muxd's Initial packets with a
    Version Negotiation listing only unknown versions, or with floods of
    garbage: the QUIC attempt fails (at once, or at its deadline), the
    request and a bystander's go over TCP without noticing, muxd stays up and
    small."""
    fake = FakeQuicOrigin(reply)
    try:
        ng = tls_nginx_factory(http2=True, extra=f"add_header Alt-Svc 'h3=\":{fake.port}\"; ma=3600' always;\n")
        (ng.root / "which").write_text("tcp\n")
        m = muxd(h3_conf(pki, ng.port, pool={"h3_timeout": "200ms"}), args=["-v"])
        assert which(m, ng) == "tcp"  # learns the alternative
        before = rss_kib(m.pid)
        results = []

        def bystander():
            results.append(which(m, ng))

        t = threading.Thread(target=bystander)
        t.start()
        assert which(m, ng, timeout=20) == "tcp"
        t.join(20)
        assert results == ["tcp"]
        wait_until(lambda: fake.received > 0, timeout=5, what="muxd to try QUIC")
        wait_until(lambda: metric(m, "muxd_h3_fallbacks_total") >= 1, timeout=10, what="an h3 fallback counted")
        assert m.proc.poll() is None, "muxd died"
        assert [which(m, ng) for _ in range(3)] == ["tcp"] * 3  # the alternative is marked broken
        assert_rss_bounded(m, before, reply.__name__)
    finally:
        fake.stop()
