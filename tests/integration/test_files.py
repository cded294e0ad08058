"""Files muxd reads and writes, and what they cost the event loop: a rotated
ca_file takes effect at the next reload (the TLS credentials are cached by
file identity, as pool keys are); file identities are taken at load, never
with a stat() per request; the descriptor count (/proc/self/fd) is not made
between a client's accept and the reading of its request; a keep-alive
request costs a recv and a send per side; the access log is written by a short timer, yet
complete after shutdown; the Alt-Svc cache is saved without fsync on the
event loop, and durably at shutdown."""

import collections
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from support import HTTPReader, connect, parse_access_log, pattern_bytes, proxy_request, wait_until

ONE_K = pattern_bytes(1024, seed=5)
STRACE = shutil.which("strace")


def https_get(m, url, timeout=10):
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request("GET", url))
        return HTTPReader(s).read_response()


def get_many(m, url, n, timeout=10):
    """n requests on one client connection (a keep-alive client)."""
    out = []
    with connect(m.port, timeout=timeout) as s:
        reader = HTTPReader(s)
        for _ in range(n):
            s.sendall(proxy_request("GET", url))
            out.append(reader.read_response())
    return out


def rotate(path, source):
    """Replace path by a copy of source the way rotations do (rename over)."""
    tmp = f"{path}.new"
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def reloaded(m, count):
    wait_until(lambda: m.log().count("configuration reloaded") >= count, timeout=10, what="the reload")


# --------------------------------------------------------------------------
# ca_file rotation (credentials keyed by file identity)


def test_rotated_ca_file_new_anchors_fail(muxd, nginx_tls, pki, tmp_path):
    """Trusted before the rotation, not after: the new anchors are used."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    ca = tmp_path / "anchors.pem"
    rotate(ca, pki.ca_cert)
    m = muxd({"route *": {"ca_file": ca}})
    assert https_get(m, nginx_tls.url("/1k")).status == 200
    rotate(ca, pki.self_cert)  # another CA: it does not sign nginx's leaf
    m.reload()
    reloaded(m, 1)
    resp = https_get(m, nginx_tls.url("/1k"))
    assert resp.status == 502, resp
    assert "certificate" in resp.text.lower() or "unknown" in resp.text.lower(), resp.text


def test_rotated_ca_file_new_anchors_succeed(muxd, nginx_tls, pki, tmp_path):
    """Untrusted before the rotation, trusted after."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    ca = tmp_path / "anchors.pem"
    rotate(ca, pki.self_cert)
    m = muxd({"route *": {"ca_file": ca}})
    assert https_get(m, nginx_tls.url("/1k")).status == 502
    rotate(ca, pki.ca_cert)
    m.reload()
    reloaded(m, 1)
    resp = https_get(m, nginx_tls.url("/1k"))
    assert resp.status == 200, resp
    assert resp.body == ONE_K


# --------------------------------------------------------------------------
# no stat() per request


STAT_CALLS = "stat,lstat,newfstatat,statx,fstatat64"


def strace_attach(pid, out, calls=STAT_CALLS, extra=()):
    """strace -f of pid's calls into out, once attached (skips when strace
    cannot attach here); stop it with SIGINT."""
    proc = subprocess.Popen([STRACE, "-f", "-qq", *extra, "-e", f"trace={calls}", "-o", str(out),
                             "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # strace prints nothing when attached with -qq: wait for the first traced
    # process to appear in /proc as a tracer of muxd
    wait_until(lambda: _traced_by(pid) == proc.pid or proc.poll() is not None, timeout=10,
               what="strace to attach")
    if proc.poll() is not None:
        pytest.skip(f"strace cannot attach here: {proc.stderr.read().decode(errors='replace')}")
    return proc


def _traced_by(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_no_stat_per_request_for_pool_keys(muxd, nginx_tls, pki, tmp_path):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    ca = tmp_path / "anchors.pem"
    rotate(ca, pki.ca_cert)
    m = muxd({"route *": {"ca_file": ca}})
    assert all(r.status == 200 for r in get_many(m, nginx_tls.url("/1k"), 2))  # warm
    out = tmp_path / "strace.out"
    tracer = strace_attach(m.pid, out)
    try:
        responses = get_many(m, nginx_tls.url("/1k"), 30)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    assert all(r.status == 200 for r in responses)
    calls = [line for line in out.read_text().splitlines() if str(ca) in line]
    assert calls == [], f"{len(calls)} stat calls on the CA file for 30 requests: {calls[:3]}"


def trace_fresh_clients(muxd, nginx, tmp_path):
    """strace of muxd (accepts, opens, stats, directory reads, loop passes)
    while four fresh clients come 150 ms apart, until muxd has counted its
    descriptors at least once: the trace's lines."""
    (nginx.root / "1k").write_bytes(ONE_K)
    m = muxd()
    assert https_get(m, nginx.url("/1k")).status == 200  # warm pool
    out = tmp_path / "strace.out"
    proc = strace_attach(m.pid, out, "accept4,accept,openat,getdents64,stat,newfstatat,statx,epoll_wait")
    try:
        for _ in range(4):
            time.sleep(0.15)  # longer than FD_RECOUNT_MS: the count is stale at the accept
            assert https_get(m, nginx.url("/1k")).status == 200
        # the deferred count still happens
        wait_until(lambda: "/proc/self/fd" in out.read_text(), timeout=5, what="a descriptor count")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    return out.read_text().splitlines()


def _is_accept(line):
    return "accept" in line and "EAGAIN" not in line and "resumed" not in line


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_no_descriptor_count_between_accept_and_request(muxd, nginx, tmp_path):
    """Fresh clients more than FD_RECOUNT_MS (100 ms) apart find the
    descriptor count stale at every accept; far from the reserve, the count
    of /proc/self/fd is made by a timer afterwards, not in the accept
    callback before the client's request is read."""
    lines = trace_fresh_clients(muxd, nginx, tmp_path)
    inline, after_accept = 0, False
    for line in lines:
        if _is_accept(line):
            after_accept = True
        elif "epoll_wait" in line:
            after_accept = False
        elif "/proc/self/fd" in line and after_accept:
            inline += 1
    accepts = sum(1 for line in lines if _is_accept(line))
    assert accepts >= 4, lines
    assert inline == 0, f"{inline} counts of /proc/self/fd right after an accept, of {accepts} accepts"


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_descriptor_count_is_one_stat(muxd, nginx, tmp_path):
    """Where the kernel gives the number of open descriptors as the size of
    /proc/self/fd (Linux 6.2 and later), the count is that one stat, not a
    walk of the directory (7.6 ms at 10 000 descriptors)."""
    if os.stat("/proc/self/fd").st_size <= 0:
        pytest.skip("this kernel does not report the open descriptors as the size of /proc/self/fd")
    lines = trace_fresh_clients(muxd, nginx, tmp_path)
    counts = [line for line in lines if "/proc/self/fd" in line]
    walks = [line for line in lines if "getdents64" in line or ("openat" in line and "/proc/self/fd" in line)]
    assert counts, lines
    assert walks == [], f"/proc/self/fd walked: {walks[:3]}"


# --------------------------------------------------------------------------
# socket calls per keep-alive request

SOCKET_CALLS = "read,readv,write,writev,recvfrom,sendto,recvmsg,sendmsg,ioctl,epoll_wait"


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_keep_alive_request_socket_calls(muxd, nginx, tmp_path):
    """A keep-alive request costs a recv and a send (sendmsg when the bytes
    span buffer chains) on each side and the loop's waits: no readv/writev (their kernel path costs ~1 µs more per
    request under wrk), no FIONREAD ioctl, no read/write on sockets."""
    (nginx.root / "1k").write_bytes(ONE_K)
    m = muxd()
    n = 50
    assert get_many(m, nginx.url("/1k"), 1)[-1].status == 200  # warm the pool
    out = tmp_path / "strace.out"
    tracer = strace_attach(m.pid, out, SOCKET_CALLS)
    try:
        assert all(r.status == 200 and r.body == ONE_K for r in get_many(m, nginx.url("/1k"), n))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    calls = collections.Counter(re.match(r"(?:\d+\s+)?(\w+)\(", line).group(1)
                                for line in out.read_text().splitlines() if re.match(r"(?:\d+\s+)?\w+\(", line))
    assert not {k: v for k, v in calls.items() if k in ("readv", "writev", "ioctl", "read", "write")}, calls
    # the response's head and body are two buffer chains: one sendmsg
    assert calls["recvfrom"] >= 2 * n and calls["sendto"] + calls["sendmsg"] >= 2 * n, calls
    assert sum(calls.values()) <= 8 * n, calls


# --------------------------------------------------------------------------
# the access log


def test_access_log_complete_after_shutdown(muxd, nginx, tmp_path):
    (nginx.root / "x").write_bytes(b"x")
    log = tmp_path / "access.log"
    m = muxd({"muxd": {"access_log": str(log)}})
    n = 50
    assert all(r.status == 200 for r in get_many(m, nginx.url("/x"), n))
    assert m.stop() == 0
    lines = parse_access_log(log)
    assert len(lines) == n, lines[-3:]
    assert not [line for line in lines if "bad" in line]


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_access_log_not_written_per_request(muxd, nginx, tmp_path):
    (nginx.root / "x").write_bytes(b"x")
    log = tmp_path / "access.log"
    m = muxd({"muxd": {"access_log": str(log)}})
    assert get_many(m, nginx.url("/x"), 1)[-1].status == 200
    wait_until(lambda: len(parse_access_log(log)) == 1, timeout=5, what="the first line")
    out = tmp_path / "strace.out"
    tracer = strace_attach(m.pid, out, "write,writev,pwrite64", extra=("-s", "64"))
    try:
        assert all(r.status == 200 for r in get_many(m, nginx.url("/x"), 20))
        wait_until(lambda: len(parse_access_log(log)) == 21, timeout=5, what="21 access log lines")
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    # the log lines start with a timestamp and the client: count the writes that carry them
    writes = [line for line in out.read_text().splitlines() if "Z 127.0.0.1:" in line]
    assert 1 <= len(writes) <= 3, f"{len(writes)} writes for 20 requests"


def test_access_log_written_within_a_second_or_two(muxd, nginx, tmp_path):
    (nginx.root / "x").write_bytes(b"x")
    log = tmp_path / "access.log"
    m = muxd({"muxd": {"access_log": str(log)}})
    assert get_many(m, nginx.url("/x"), 3)[-1].status == 200
    wait_until(lambda: len(parse_access_log(log)) == 3, timeout=5, what="3 access log lines")


def test_access_log_flushed_at_reload(muxd, nginx, tmp_path):
    (nginx.root / "x").write_bytes(b"x")
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    m = muxd({"muxd": {"access_log": str(old)}})
    assert get_many(m, nginx.url("/x"), 4)[-1].status == 200
    m.reload({"muxd": {"access_log": str(new)}})
    reloaded(m, 1)
    assert len(parse_access_log(old)) == 4  # no wait: written out at the reload
    assert get_many(m, nginx.url("/x"), 2)[-1].status == 200
    m.stop()
    assert len(parse_access_log(new)) == 2


# --------------------------------------------------------------------------
# the Alt-Svc cache


def altsvc_lines(m):
    path = m.state_dir / "altsvc.cache"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_altsvc_saved_without_fsync_on_the_loop(muxd, tls_nginx_factory, pki, tmp_path):
    ng = tls_nginx_factory(extra='add_header Alt-Svc \'h3=":4433"; ma=3600\' always;')
    (ng.root / "1k").write_bytes(ONE_K)
    m = muxd({"route *": {"ca_file": pki.ca_cert, "h3": "off"}})
    out = tmp_path / "strace.out"
    tracer = strace_attach(m.pid, out, "fsync,fdatasync,sync_file_range")
    try:
        assert https_get(m, ng.url("/1k")).status == 200
        lines = wait_until(lambda: len(altsvc_lines(m)) >= 2 and altsvc_lines(m), timeout=10,
                           what="STATE/altsvc.cache")
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    assert lines[0] == "muxd-altsvc 1"
    assert " 4433 " in lines[1], lines
    syncs = [line for line in out.read_text().splitlines() if "sync" in line]
    assert syncs == [], f"fsync on the event loop: {syncs}"


def test_altsvc_persisted_at_shutdown(muxd, tls_nginx_factory, pki):
    ng = tls_nginx_factory(extra='add_header Alt-Svc \'h3=":4433"; ma=3600\' always;')
    (ng.root / "1k").write_bytes(ONE_K)
    m = muxd({"route *": {"ca_file": pki.ca_cert, "h3": "off"}})
    assert https_get(m, ng.url("/1k")).status == 200
    assert m.stop() == 0  # at once: before any timed save could run
    lines = altsvc_lines(m)
    assert lines and lines[0] == "muxd-altsvc 1", lines
    assert any(f" {ng.port} h3 - 4433 " in line for line in lines[1:]), lines
