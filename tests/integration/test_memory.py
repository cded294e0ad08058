"""Backpressure: a big download to a slow client keeps muxd's memory bounded."""

import hashlib
import time

import pytest

from support import SANITIZE, HTTPReader, connect, pattern_chunks, proxy_request, vm_hwm_kib

SIZE = 100 * 1024 * 1024
RATE = 25e6  # bytes per second the client reads
RSS_LIMIT_KIB = 48 * 1024


@pytest.fixture
def big_file(nginx):
    """SIZE bytes in nginx's root; returns (name, sha256).  Removed afterwards
    (pytest keeps the temporary directories of recent runs)."""
    path = nginx.root / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in pattern_chunks(SIZE, seed=7):
            f.write(chunk)
            digest.update(chunk)
    yield path.name, digest.hexdigest()
    path.unlink()


def test_slow_client_100mb_download_bounded_rss(muxd, nginx, big_file):
    name, expected = big_file
    m = muxd()

    got = hashlib.sha256()
    received = 0
    with connect(m.port, timeout=30) as s:
        s.sendall(proxy_request("GET", nginx.url("/" + name)))
        reader = HTTPReader(s)
        _, status, _, headers = reader.read_head()
        assert status == 200
        start = time.monotonic()
        for piece in reader.iter_body(headers):
            got.update(piece)
            received += len(piece)
            ahead = received / RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # throttle to RATE
    assert received == SIZE
    assert got.hexdigest() == expected

    peak = vm_hwm_kib(m.pid)
    print(f"muxd peak RSS: {peak} KiB")
    if not SANITIZE:  # ASan's shadow memory and quarantine make RSS meaningless
        assert peak < RSS_LIMIT_KIB, f"muxd peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
