"""HTTP/2 to clients inside interception (issue 14 item 1): an intercepted
TLS session offers ALPN h2 and http/1.1; a client that picks h2 gets an
nghttp2 server session whose streams are exchanges on the shared pool.

Real clients: curl --http2 (and its --parallel mode), httpx with http2=True,
and python-h2 scripted clients for the protections (floods, rapid reset,
concurrent streams, header list size), RST_STREAM of one stream and a stream
whose window stays closed, and GOAWAY on drain.
"""

import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from support import LOCALHOST, clean_env, curl, pattern_bytes, wait_until

ONE_K = pattern_bytes(1024, seed=41)


def intercept_conf(pki, port, **sections):
    c = {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}
    for section, kv in sections.items():
        c.setdefault(section, {}).update(kv)
    return c


def local_ca(m):
    return str(m.state_dir / "ca.pem")


def metric(m, name, **labels):
    """The value of one sample of /metrics (0 when absent)."""
    return int(m.metrics().value(name, **labels))


def test_curl_http2_gets_http2(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    out = curl(m.port, f"https://localhost:{nginx_tls.port}/1k", "--http2", "--cacert",
               local_ca(m), "-w", "\n%{http_version} %{http_code}")
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"2 200", tail
    assert body == ONE_K
    assert metric(m, "muxd_client_h2_sessions_total") == 1


def test_client_h2_off_keeps_http11(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port, muxd={"client_h2": "off"}))
    out = curl(m.port, f"https://localhost:{nginx_tls.port}/1k", "--http2", "--cacert",
               local_ca(m), "-w", "\n%{http_version} %{http_code}")
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition(b"\n")
    assert tail == b"1.1 200", tail
    assert body == ONE_K
