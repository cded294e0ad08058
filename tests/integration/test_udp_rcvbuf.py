"""bench/compare's LD_PRELOAD shim (bench/udp_rcvbuf.c, built by `make
integration` as build/bench/udp_rcvbuf.so): with UDP_RCVBUF set, every UDP
socket a program creates gets that SO_RCVBUF (capped by net.core.rmem_max
and doubled, as the kernel does for muxd's own request); other sockets, and
UDP sockets without UDP_RCVBUF, keep the kernel's default."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import MUXD_BIN

SHIM = os.environ.get("MUXD_RCVBUF_SHIM") or str(Path(MUXD_BIN).parent / "bench" / "udp_rcvbuf.so")

# the program under the shim: the SO_RCVBUF of a fresh UDP (v4, v6) and TCP socket
PROBE = """
import json, socket
out = {}
for name, family, kind in (("udp", socket.AF_INET, socket.SOCK_DGRAM), ("udp6", socket.AF_INET6, socket.SOCK_DGRAM),
                           ("tcp", socket.AF_INET, socket.SOCK_STREAM)):
    try:
        with socket.socket(family, kind) as s:
            out[name] = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        out[name] = None
print(json.dumps(out))
"""


def probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, **env}, timeout=30)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return json.loads(out.stdout)


@pytest.fixture
def shim():
    if not os.access(SHIM, os.R_OK):
        if os.environ.get("MUXD_RCVBUF_SHIM"):  # make integration built it: its absence is a failure
            pytest.fail(f"{SHIM} is missing", pytrace=False)
        pytest.skip(f"{SHIM} is not built (make integration builds it)")
    return SHIM


def test_udp_sockets_get_the_receive_buffer_asked_for(shim):
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    want = 1 << 20
    plain = probe({})
    shimmed = probe({"LD_PRELOAD": shim, "UDP_RCVBUF": str(want)})
    assert shimmed["udp"] == 2 * min(want, rmem_max) != plain["udp"]
    if plain["udp6"] is not None:
        assert shimmed["udp6"] == shimmed["udp"]
    assert shimmed["tcp"] == plain["tcp"]  # not a UDP socket: left alone


def test_without_udp_rcvbuf_the_shim_changes_nothing(shim):
    assert probe({"LD_PRELOAD": shim}) == probe({}) == probe({"LD_PRELOAD": shim, "UDP_RCVBUF": "0"})
