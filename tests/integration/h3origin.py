"""A scriptable HTTP/3 origin for the muxd integration tests: the C program
tests/h3origin/h3origin.c (built by ``make`` as build/tests/h3origin; found
through $MUXD_H3ORIGIN, else next to $MUXD_BIN).  Its :path chooses what it
does (see the comment at the top of h3origin.c): /sse (one event now, the
next one per ``trigger()``), /status/N, /echo (with 100-continue),
/interim?n=N, /bigheader?kib=K, /reset, /noread, /held (answered at
``trigger("release")``), /stop, the floods /ctrlflood, /goawayflood,
/greasestream, /unistreams, /emptydata; anything else 200 "ok".

``H3Origin(workdir, cert)`` listens on UDP 127.0.0.1:.port; a request for
/NAME is answered from the files .root/NAME (the body) and .root/NAME.head
(the status on the first line, then "name: value" lines) when either
exists, after the whole request body (100 first for Expect: 100-continue).  ``.log()`` is
its stderr: "conn N" per QUIC connection, "request N METHOD PATH" per
request; ``.requests()`` parses it into (conn number, method, path).

``h3_only_muxd(muxd, pki, origin, **sections)`` starts muxd with an Alt-Svc
cache that sends https://localhost:PORT (PORT = the origin's UDP port, no
TCP listener there) to the origin over HTTP/3, intercepting CONNECTs to
PORT: a request that does not go over HTTP/3 fails instead of silently
using TCP.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from support import MUXD_BIN, wait_until

H3ORIGIN = os.environ.get("MUXD_H3ORIGIN") or str(Path(MUXD_BIN).resolve().parent / "tests" / "h3origin")


class H3Origin:
    def __init__(self, workdir, cert):
        if not os.access(H3ORIGIN, os.X_OK):
            pytest.fail(f"h3origin {H3ORIGIN} not found (run make, or set MUXD_H3ORIGIN)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "h3origin.log"
        self.root = self.dir / "www"  # response files: NAME (body), NAME.head (status, fields)
        self.root.mkdir(exist_ok=True)
        cert_path, key_path = cert
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([H3ORIGIN, str(cert_path), str(key_path), "0", str(self.root)],
                                         stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("port "):
            self.stop()
            raise AssertionError(f"h3origin did not start: {line!r}; see {self.log_path}")
        self.port = int(line.split()[1])

    def trigger(self, line="next"):
        """Send the next event on every open /sse stream ("end" ends them)."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def requests(self):
        out = []
        for ln in self.log().splitlines():
            f = ln.split()
            if len(f) == 4 and f[0] == "request":
                out.append((int(f[1]), f[2], f[3]))
        return out

    def connections(self):
        return sum(1 for ln in self.log().splitlines() if ln.startswith("conn ") and len(ln.split()) == 2)

    def wait_request(self, path, timeout=10):
        return wait_until(lambda: [r for r in self.requests() if r[2] == path], timeout=timeout,
                          what=f"h3origin saw a request for {path}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


def h3_only_muxd(muxd, pki, origin, args=("-v",), **sections):
    """muxd intercepting CONNECTs to origin.port, verifying origins with the
    test CA, with an Alt-Svc cache entry https://localhost:PORT -> h3 on the
    origin's UDP port (written while muxd is stopped, then loaded)."""
    conf = {"intercept": {"ports": origin.port}, "route *": {"ca_file": pki.ca_cert}}
    for section, kv in sections.items():
        conf.setdefault(section, {}).update(kv)
    m = muxd(conf, args=list(args))
    assert m.stop() == 0
    (m.state_dir / "altsvc.cache").write_bytes(
        b"muxd-altsvc 1\nhttps localhost %d h3 - %d %d 0\n" % (origin.port, origin.port, time.time() + 3600))
    return m.start()
