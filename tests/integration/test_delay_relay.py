"""The benchmarks' delay relay (bench/delay_relay.c, built by `make
integration` as build/bench/delay_relay): bytes and datagrams arrive intact,
in order and no earlier than the delay, TCP half-closes pass through, a TCP
direction stops reading beyond its bound, and each UDP client keeps one
upstream socket.  Timing is only checked from below (never early)."""

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import MUXD_BIN, SANITIZE, StreamServer, echo_stream, pattern_bytes, recv_all, sha256, wait_until

RELAY = os.environ.get("MUXD_DELAY_RELAY") or str(Path(MUXD_BIN).parent / "bench" / "delay_relay")
HOST = "127.0.0.1"
UDP_SEGMENT = 103  # linux/udp.h


@pytest.fixture
def relay():
    """Factory: relay(target_port, delay_ms, *options) -> the relay's port."""
    if not os.access(RELAY, os.X_OK):
        if os.environ.get("MUXD_DELAY_RELAY"):  # make integration built it: its absence is a failure
            pytest.fail(f"{RELAY} is missing", pytrace=False)
        pytest.skip(f"{RELAY} is not built (make integration builds it)")
    procs = []

    def start(target, delay_ms, *options):
        for _ in range(5):  # --udp binds the TCP port number for UDP too: retry if taken
            p = subprocess.Popen([RELAY, "--listen", "0", "--target", f"{HOST}:{target}", "--delay-ms",
                                  str(delay_ms), *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(p)
            line = p.stdout.readline().decode(errors="replace")
            if "relay listening on" in line:
                return int(line.split(":")[1].split()[0])
            p.wait(10)
        pytest.fail(f"delay relay did not start: {line!r}")

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(30 if SANITIZE else 10)
        out = p.stdout.read().decode(errors="replace")
        assert "Sanitizer" not in out and "runtime error" not in out, out


@pytest.fixture
def servers():
    made = []

    def make(handler):
        s = StreamServer(handler)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_tcp_intact_both_ways_and_half_close(relay, servers):
    """8 MiB up, then the client's EOF; the server answers its digest and
    4 MiB after it saw that EOF, then closes: all of it arrives, in order."""
    up, down = pattern_bytes(8 << 20, seed=1), pattern_bytes(4 << 20, seed=2)

    def handler(sock):
        got = recv_all(sock)
        sock.sendall(sha256(got).encode() + down)
        sock.shutdown(socket.SHUT_WR)

    srv = servers(handler)
    port = relay(srv.port, 5)
    with socket.create_connection((HOST, port), timeout=30) as c:
        c.sendall(up)
        c.shutdown(socket.SHUT_WR)
        answer = recv_all(c)
    assert answer[:64].decode() == sha256(up)
    assert answer[64:] == down
    assert not srv.errors


def test_tcp_never_early(relay, servers):
    """The first answer comes no earlier than the handshake's round trip plus
    one round trip (4 x delay); the next one no earlier than 2 x delay."""
    srv = servers(echo_stream)
    delay = 0.05
    port = relay(srv.port, delay * 1000)
    t0 = time.monotonic()
    with socket.create_connection((HOST, port), timeout=10) as c:
        c.sendall(b"a")
        assert c.recv(1) == b"a"
        t1 = time.monotonic()
        c.sendall(b"b")
        assert c.recv(1) == b"b"
        t2 = time.monotonic()
    assert t1 - t0 >= 4 * delay
    assert t2 - t1 >= 2 * delay


def test_tcp_stops_reading_beyond_its_bound(relay, servers):
    """A client that reads nothing: the relay takes its bound (1 MiB) and
    the sockets' buffers, not the server's 128 MiB."""
    total = 128 << 20
    sent = {}

    def handler(sock):
        sock.settimeout(3 if not SANITIZE else 10)  # blocked that long: the pipe is full
        block, n = b"x" * (1 << 20), 0
        try:
            while n < total:
                n += sock.send(block)
        except (socket.timeout, OSError):
            pass
        sent["n"] = n

    srv = servers(handler)
    port = relay(srv.port, 1, "--max-queue-mb", "1")
    with socket.socket() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        c.connect((HOST, port))
        wait_until(lambda: "n" in sent, timeout=120, what="the server to block")
    assert sent["n"] < 64 << 20, sent


class UDPEcho:
    """Echoes datagrams; records the source address of each."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # the relay sends in bursts
        self.sock.bind((HOST, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.sources = []
        self.sizes = []
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            self.sources.append(addr)
            self.sizes.append(len(data))
            self.sock.sendto(data, addr)

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def udp_echo():
    e = UDPEcho()
    yield e
    e.stop()


def udp_client(port):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    c.settimeout(10)
    c.connect((HOST, port))
    return c


def test_udp_in_order_one_upstream_socket_per_client(relay, udp_echo):
    port = relay(udp_echo.port, 5, "--udp")
    clients = [udp_client(port), udp_client(port)]
    try:
        for i in range(50):  # interleaved, a little at a time: nothing overflows
            for k, c in enumerate(clients):
                c.send(b"%d %05d" % (k, i) + b"." * 1000)
        for k, c in enumerate(clients):
            got = [c.recv(65536)[:7] for _ in range(50)]
            assert got == [b"%d %05d" % (k, i) for i in range(50)]
    finally:
        for c in clients:
            c.close()
    assert len(set(udp_echo.sources)) == 2  # one upstream socket per client, kept


def test_udp_never_early(relay, udp_echo):
    delay = 0.05
    port = relay(udp_echo.port, delay * 1000, "--udp")
    with udp_client(port) as c:
        for _ in range(3):
            t0 = time.monotonic()
            c.send(b"ping")
            assert c.recv(100) == b"ping"
            assert time.monotonic() - t0 >= 2 * delay


def test_udp_gso_burst_stays_datagrams(relay, udp_echo):
    """A GSO sender's burst (one send, 40 datagrams of 1200 bytes) is
    received coalesced where the kernel has UDP GRO: it must reach the
    target as the same 40 datagrams, and come back as them."""
    port = relay(udp_echo.port, 5, "--udp")
    with udp_client(port) as c:
        burst = b"".join(b"%04d" % i + b"-" * 1196 for i in range(40))
        try:
            c.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1200)
            c.send(burst)
        except OSError as e:
            pytest.skip(f"no UDP GSO here: {e}")
        c.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)
        got = [c.recv(65536) for _ in range(40)]
    assert [g[:4] for g in got] == [b"%04d" % i for i in range(40)]
    assert all(len(g) == 1200 for g in got)
    wait_until(lambda: len(udp_echo.sizes) >= 40, what="the echo's count")
    assert udp_echo.sizes == [1200] * 40
