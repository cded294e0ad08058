"""Receive windows of HTTP/2 upstreams: they grow while the client keeps up
with a distant origin, and stay put while the client is slow, so a big
download is fast and muxd's memory stays bounded either way."""

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import SANITIZE, HTTPReader, connect, free_port, pattern_chunks, proxy_request, vm_hwm_kib

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
RSS_LIMIT_KIB = 48 * 1024
GROWTH = re.compile(r"h2: stream \d+ to \S+: receive window (\d+) KiB")
# each growth: (window KiB, KiB consumed on the stream so far)
GROWTH_AT = re.compile(r"h2: stream \d+ to \S+: receive window (\d+) KiB after (\d+) KiB")


def conf(pki, **pool):
    c = {"route *": {"ca_file": pki.ca_cert}}
    if pool:
        c["pool"] = {k: str(v) for k, v in pool.items()}
    return c


def big_file(root, size, seed):
    """size pattern bytes in root/big; returns their sha256."""
    digest = hashlib.sha256()
    with open(root / "big", "wb") as f:
        for chunk in pattern_chunks(size, seed=seed):
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def relay():
    """Factory: relay(target_port, delay_ms, udp=False) -> the port of
    bench/delay_relay.py forwarding TCP (and with udp, UDP too) to
    127.0.0.1:target_port, delay_ms late each way."""
    procs = []

    def start(target, delay_ms, udp=False):
        port = free_port()
        p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "delay_relay.py"), "--listen", str(port),
                              "--target", f"127.0.0.1:{target}", "--delay-ms", str(delay_ms),
                              *(["--udp"] if udp else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        line = p.stdout.readline().decode(errors="replace")
        if "relay listening" not in line:
            pytest.fail(f"delay relay did not start: {line!r}")
        return port

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def download(m, url, stall_after=None, stall_s=0.0, rate=None):
    """GET url through muxd; returns (bytes, sha256). Optionally read nothing
    for stall_s seconds once stall_after bytes arrived, and read at most rate
    bytes/s."""
    got = hashlib.sha256()
    received = 0
    with connect(m.port, timeout=60) as s:
        s.sendall(proxy_request("GET", url))
        reader = HTTPReader(s)
        _, status, _, headers = reader.read_head()
        assert status == 200
        start = time.monotonic()
        stalled = False
        for piece in reader.iter_body(headers):
            got.update(piece)
            received += len(piece)
            if stall_after is not None and not stalled and received >= stall_after:
                stalled = True
                time.sleep(stall_s)  # the client stops reading: that is the point
                start = time.monotonic() - received / rate if rate else start
            if rate:
                ahead = received / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    return received, got.hexdigest()


def test_h2_window_grows_for_a_fast_client_behind_a_round_trip(muxd, tls_nginx_factory, pki, relay):
    """A client that keeps up with a distant HTTP/2 origin gets a larger
    window than the 64 KiB one it starts with; the body stays intact."""
    size = 32 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=41)
    port = relay(ng.port, 5)
    m = muxd(conf(pki), args=["-v"])
    received, digest = download(m, f"https://127.0.0.1:{port}/big")
    assert received == size
    assert digest == expected
    grown = [int(k) for k in GROWTH.findall(m.log())]
    assert grown, "the stream window never grew"
    assert max(grown) <= 24 * 1024, grown
    assert m.metrics().sum("muxd_requests_total", proto="h2") == 1


def test_h2_window_reaches_the_path_at_the_first_check(muxd, tls_nginx_factory, pki, relay):
    """Behind 100 ms round trips, the first check (half of the first 64 KiB
    window consumed, as it arrives) opens the window to two round trips of
    the rate the client drained at, megabytes: not 128 KiB, the first step
    of a doubling ramp that would need 9 round trips to reach 32 MiB."""
    size = 16 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=45)
    port = relay(ng.port, 50)
    m = muxd(conf(pki), args=["-v"])
    assert download(m, f"https://127.0.0.1:{port}/big") == (size, expected)
    steps = [(int(w), int(at)) for w, at in GROWTH_AT.findall(m.log())]
    assert steps, "the stream window never grew"
    window, at = steps[0]
    assert at <= 64, steps  # the first check: half of the first window
    # 1 MiB at 100 ms needs only 32 KiB drained within 6 ms (the bench sees
    # about 0.3 ms); the window is the bandwidth-delay product from then on
    assert window >= 1024, steps


def test_h2_slow_client_behind_a_round_trip_bounded_rss(muxd, tls_nginx_factory, pki, relay):
    """A client reading at 25 MB/s behind 100 ms round trips: the window may
    open wide while the socket buffers toward the client fill, but it never
    grows past the stream maximum, stops growing once the client's rate
    shows, and muxd's memory stays bounded."""
    size = 64 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=46)
    port = relay(ng.port, 50)
    m = muxd(conf(pki), args=["-v"])
    received, digest = download(m, f"https://127.0.0.1:{port}/big", rate=25e6)
    assert (received, digest) == (size, expected)
    steps = [(int(w), int(at)) for w, at in GROWTH_AT.findall(m.log())]
    print(f"window growth (KiB, after KiB): {steps}; peak RSS {vm_hwm_kib(m.pid)} KiB")
    assert steps and max(w for w, _ in steps) <= 24 * 1024, steps
    # 25 MB/s x 2 round trips is 5 MB: past the socket buffers no check grows it
    assert not [s for s in steps if s[1] > 32 * 1024], steps
    if not SANITIZE:
        peak = vm_hwm_kib(m.pid)
        assert peak < RSS_LIMIT_KIB, f"muxd peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"


def test_h2_window_respects_max_stream_window(muxd, tls_nginx_factory, pki, relay):
    size = 16 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=42)
    port = relay(ng.port, 5)
    m = muxd(conf(pki, max_stream_window_kib=256), args=["-v"])
    received, digest = download(m, f"https://127.0.0.1:{port}/big")
    assert (received, digest) == (size, expected)
    grown = [int(k) for k in GROWTH.findall(m.log())]
    assert grown and max(grown) <= 256, grown


def test_h2_no_window_budget_no_growth(muxd, tls_nginx_factory, pki, relay):
    size = 8 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=43)
    port = relay(ng.port, 5)
    m = muxd(conf(pki, window_budget_kib=0), args=["-v"])
    assert download(m, f"https://127.0.0.1:{port}/big") == (size, expected)
    assert not GROWTH.findall(m.log())


def test_h2_stalled_client_100mb_bounded_rss(muxd, tls_nginx_factory, pki):
    """A fast HTTP/2 origin sends 100 MiB; the client reads a little, reads
    nothing for a while, then reads at 25 MB/s: muxd holds no more than the
    window it gave, its memory stays bounded, and the body is intact."""
    size = 100 * MB
    ng = tls_nginx_factory(http2=True)
    expected = big_file(ng.root, size, seed=44)
    m = muxd(conf(pki), args=["-v"])
    received, digest = download(m, ng.url("/big"), stall_after=4 * MB, stall_s=3.0, rate=25e6)
    (ng.root / "big").unlink()
    assert (received, digest) == (size, expected)
    peak = vm_hwm_kib(m.pid)
    print(f"muxd peak RSS: {peak} KiB; window growth: {GROWTH.findall(m.log())[-5:]}")
    if not SANITIZE:  # ASan's shadow memory and quarantine make RSS meaningless
        assert peak < RSS_LIMIT_KIB, f"muxd peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
