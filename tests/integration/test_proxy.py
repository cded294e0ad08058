"""Proxy chaining: ``[route PATTERN] proxy = direct | env | URL [URL...]``.

Real parents do the work: squid (HTTP parent: absolute-form requests over
pooled connections, CONNECT for https origins and client tunnels), nghttpx in
HTTP/2 proxy mode (an ``https://`` parent, trusted through proxy_ca_file) and
microsocks (SOCKS5 with RFC 1929 user/password).  Small scripted python
parents stand in where a real one cannot misbehave on purpose (a parent that
always answers 407).

squid's access log records the client's address:port (``%>a:%>p``) so that the
number of distinct muxd-to-squid connections can be counted; nghttpx's records
``$remote_addr:$remote_port`` likewise.  squid and nghttpx log a CONNECT only
when its tunnel ends, so tests that look for a CONNECT line stop muxd first
(which closes its pooled connections and tunnels).  microsocks logs
``client[N] ADDR: connected to HOST:PORT`` on stderr, which shows whether
muxd sent it a host name (socks5h) or an address it resolved itself (socks5).

Every parent runs on an ephemeral loopback port and is stopped at teardown.
"""

import base64
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import attach_log, render_conf
from test_windows import relay  # noqa: F401 (a fixture)
from support import (
    LOCALHOST,
    MUXD_BIN,
    HTTPReader,
    clean_env,
    closed_port,
    connect,
    curl,
    echo_stream,
    free_port,
    open_tunnel,
    pattern_bytes,
    require_tool,
    wait_until,
)

ONE_K = pattern_bytes(1024, seed=71)
SQUID = shutil.which("squid") or "/usr/sbin/squid"
MICROSOCKS = shutil.which("microsocks") or "/usr/bin/microsocks"
NGHTTPX = shutil.which("nghttpx") or "/usr/sbin/nghttpx"

STARTUP_TIMEOUT = 15.0


def wait_listening(port, proc, what, timeout=STARTUP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            connect(port, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_group(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------
# squid


SQUID_CONF = """\
http_port {LOCALHOST}:{port}
{user}
acl SSL_ports port 1-65535
acl CONNECT method CONNECT
http_access allow CONNECT SSL_ports
http_access allow all
logformat conn %>a:%>p %rm %ru %>Hs
access_log stdio:{dir}/access.log conn
cache_log {dir}/cache.log
cache deny all
cache_mem 1 MB
pid_filename {dir}/squid.pid
coredump_dir {dir}
shutdown_lifetime 0 seconds
strip_query_terms off
client_idle_pconn_timeout 2 minutes
"""


class Squid:
    """squid -N on a fresh loopback port.  Its directory lives in /tmp (not
    under pytest's 0700 tmp_path) because squid refuses to run as root and
    drops to cache_effective_user (Debian: proxy), which must reach it.  Each
    instance gets its own service name (-n) so that the shared-memory
    segments of parallel squids do not collide."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="muxd-squid-"))
        self.dir.chmod(0o755)
        self.user = ""
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("proxy")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.user = f"cache_effective_user {pw.pw_name}"
        self.access_log = self.dir / "access.log"
        self.cache_log = self.dir / "cache.log"
        self.proc = None
        self.port = None
        self.name = None

    def start(self):
        for _ in range(5):
            self.port = free_port()
            self.name = f"muxdtest{self.port}"
            conf = self.dir / "squid.conf"
            conf.write_text(SQUID_CONF.format(LOCALHOST=LOCALHOST, port=self.port, dir=self.dir, user=self.user))
            with open(self.dir / "stderr.log", "ab") as err:
                self.proc = subprocess.Popen(
                    [SQUID, "-N", "-n", self.name, "-f", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                )
            if wait_listening(self.port, self.proc, "squid"):
                return self
            self.stop()
        pytest.fail(f"squid did not start; see {self.cache_log}")

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def url(self, userinfo=""):
        return f"http://{userinfo + '@' if userinfo else ''}{self.authority}"

    def log_lines(self):
        """[(client addr:port, method, url, status)] from the access log."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            fields = line.split()
            # "-" lines: connections that sent nothing (the start-up probe)
            if len(fields) == 4 and fields[1] != "-":
                out.append(tuple(fields))
        return out

    def requests(self, method=None, contains=""):
        return [f for f in self.log_lines() if (method is None or f[1] == method) and contains in f[2]]

    def caught_up(self, url):
        """For checks that something is NOT in the log: squid logs each
        request as it ends, one after the other, so once a HEAD of url sent
        now is logged, a request that ended before it would be too."""
        r = curl(self.port, url, "-I")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: self.requests("HEAD", url), timeout=10, what="squid's log to catch up")

    def stop(self):
        stop_group(self.proc)
        for shm in Path("/dev/shm").glob(f"{self.name}-*"):
            try:
                shm.unlink()
            except OSError:
                pass

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def squid_factory(request):
    """Factory: squid_factory() -> a started Squid (an HTTP parent proxy)."""
    require_tool(SQUID, "squid-openssl")
    instances = []

    def start():
        sq = Squid()
        instances.append(sq)
        attach_log(request, f"squid cache.log ({sq.dir.name})", sq.cache_log)
        attach_log(request, f"squid access.log ({sq.dir.name})", sq.access_log)
        return sq.start()

    yield start
    for sq in instances:
        sq.cleanup()


@pytest.fixture
def squid(squid_factory):
    return squid_factory()


# --------------------------------------------------------------------------
# microsocks


class Microsocks:
    def __init__(self, workdir, user=None, password=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True)
        self.stderr = self.dir / "stderr.log"
        self.user = user
        self.password = password
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(5):
            self.port = free_port()
            cmd = [MICROSOCKS, "-i", LOCALHOST, "-p", str(self.port)]
            if self.user is not None:
                cmd += ["-u", self.user, "-P", self.password]
            with open(self.stderr, "ab") as err:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
                )
            if wait_listening(self.port, self.proc, "microsocks"):
                return self
            stop_group(self.proc)
        pytest.fail(f"microsocks did not start; see {self.stderr}")

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def targets(self):
        """HOST:PORT of every connection it made ("connected to ..." lines)."""
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return re.findall(r"connected to (\S+)", text)

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def microsocks(request, tmp_path):
    """Factory: microsocks(user=None, password=None) -> a started Microsocks."""
    require_tool(MICROSOCKS, "microsocks")
    instances = []

    def start(user=None, password=None):
        ms = Microsocks(tmp_path / f"microsocks{len(instances)}", user, password)
        instances.append(ms)
        attach_log(request, "microsocks stderr", ms.stderr)
        return ms.start()

    yield start
    for ms in instances:
        ms.stop()


# --------------------------------------------------------------------------
# nghttpx (HTTP/2 proxy mode, TLS with the test PKI, squid as its backend)


class Nghttpx:
    def __init__(self, workdir, pki, backend_port):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True)
        self.pki = pki
        self.backend_port = backend_port
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.proc = None
        self.port = None

    def command(self):
        return [
            NGHTTPX,
            "--conf=/dev/null",
            "--http2-proxy",
            "--workers=1",
            f"--frontend={LOCALHOST},{self.port}",
            f"--backend={LOCALHOST},{self.backend_port}",
            "--backend-connections-per-host=64",
            "--no-ocsp",
            f"--pid-file={self.dir / 'nghttpx.pid'}",
            f"--accesslog-file={self.access_log}",
            "--accesslog-format=$remote_addr:$remote_port $alpn \"$request\" $status",
            f"--errorlog-file={self.error_log}",
            str(self.pki.leaf_key),
            str(self.pki.leaf_cert),
        ]

    def start(self):
        for _ in range(5):
            self.port = free_port()
            with open(self.dir / "stderr.log", "ab") as err:
                self.proc = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
                )
            if wait_listening(self.port, self.proc, "nghttpx"):
                return self
            stop_group(self.proc)
        pytest.fail(f"nghttpx did not start; see {self.error_log}")

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def log_lines(self):
        """[(remote addr:port, alpn, request line, status)]"""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = re.match(r'(\S+) (\S+) "([^"]*)" (\d+)$', line)
            if m:
                out.append(m.groups())
        return out

    def stop(self):
        stop_group(self.proc)


@pytest.fixture
def nghttpx(request, tmp_path, pki, squid_factory):
    """An nghttpx in HTTP/2 proxy mode on TLS (pki.leaf), forwarding to its
    own squid.  Returns the Nghttpx; .squid is the backend."""
    require_tool(NGHTTPX, "nghttp2-proxy")
    sq = squid_factory()
    nx = Nghttpx(tmp_path / "nghttpx", pki, sq.port)
    nx.squid = sq
    attach_log(request, "nghttpx error log", nx.error_log)
    attach_log(request, "nghttpx access log", nx.access_log)
    nx.start()
    yield nx
    nx.stop()


# --------------------------------------------------------------------------
# scripted parents


class FakeParent:
    """A scripted HTTP parent on a StreamServer: it records every request
    head it receives (request line, headers) and answers with answer(head)."""

    def __init__(self, stream_server, answer):
        self.heads = []
        self.lock = threading.Lock()
        self.answer = answer
        self.srv = stream_server(self._handle)

    @property
    def port(self):
        return self.srv.port

    @property
    def authority(self):
        return self.srv.authority

    @property
    def connections(self):
        return self.srv.connections

    def _handle(self, sock):
        reader = HTTPReader(sock)
        while True:
            try:
                raw = reader.read_until(b"\r\n\r\n")
            except Exception:  # noqa: BLE001 - EOF ends the connection
                return
            lines = raw.decode("latin-1").split("\r\n")[:-2]
            head = (lines[0], [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]])
            with self.lock:
                self.heads.append(head)
            data, keep = self.answer(head)
            sock.sendall(data)
            if not keep:
                return

    def request_lines(self):
        with self.lock:
            return [h[0] for h in self.heads]

    def header(self, index, name):
        with self.lock:
            return [v for n, v in self.heads[index][1] if n.lower() == name.lower()]


def always_407(head):
    body = b"proxy authentication required\n"
    return (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="fake"\r\n'
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        True,
    )


# --------------------------------------------------------------------------
# helpers


def curl_status(m, url, *args, timeout=20):
    """curl through muxd; returns (exit code, HTTP status, body, stderr)."""
    out = curl(m.port, url, "-w", "\n%{http_code}", *args, timeout=timeout)
    body, _, code = out.stdout.rpartition(b"\n")
    return out.returncode, int(code or b"0"), body, out.stderr.decode(errors="replace")


def route(proxy, **keys):
    return {"route *": {"proxy": proxy, **keys}}


def conf(*parts):
    out = {}
    for p in parts:
        for section, kv in p.items():
            out.setdefault(section, {}).update(kv)
    return out


def absolute_get(m, url, timeout=20):
    """GET url in absolute form straight to muxd (how a client that hands
    https:// to its proxy behaves); returns the Response."""
    with connect(m.port, timeout=timeout) as s:
        authority = url.split("/")[2]
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        return HTTPReader(s).read_response()


def loopback_name():
    """A host name that /etc/hosts maps to 127.0.0.1 and to nothing else, so
    that muxd and getaddrinfo in microsocks both resolve it to the address
    nginx listens on."""
    names = {}
    try:
        text = Path("/etc/hosts").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            names.setdefault(name.lower(), set()).add(fields[0])
    for name in ["localhost", socket.gethostname().lower()] + sorted(names):
        if names.get(name) == {"127.0.0.1"}:
            return name
    return None


def one_line(text):
    text = text.strip()
    assert "\n" not in text, f"the body is not one line: {text!r}"
    return text


# --------------------------------------------------------------------------
# 1. squid as an HTTP parent


def test_squid_parent_twenty_curls_share_two_connections(muxd, nginx, squid):
    (nginx.root / "1k").write_bytes(ONE_K)
    m = muxd(route(squid.url()))
    for i in range(20):
        r = curl(m.port, nginx.url("/1k"))
        assert r.returncode == 0, r.stderr
        assert r.stdout == ONE_K, f"request {i}: body differs"
    want = nginx.url("/1k")
    wait_until(lambda: len(squid.requests("GET", want)) >= 20, timeout=5, what="20 GETs in squid's log")
    gets = squid.requests("GET", want)
    assert len(gets) == 20, gets
    # absolute form: squid logs the full http:// URL it was given
    assert all(g[2] == want and g[3] == "200" for g in gets), gets
    conns = {g[0] for g in gets}
    assert len(conns) <= 2, f"muxd opened {len(conns)} connections to squid: {sorted(conns)}"
    wait_until(lambda: len(nginx.log_lines()) >= 20, timeout=5, what="nginx access log")
    assert len(nginx.log_lines()) == 20


def test_squid_parent_connection_shared_by_all_http_origins(muxd, nginx, origin, squid):
    """The pooled connection to an HTTP parent is keyed by the parent, not
    by the origin: requests to two different origins ride on it."""
    (nginx.root / "1k").write_bytes(ONE_K)
    o = origin()
    m = muxd(route(squid.url()))
    for i in range(6):
        url = nginx.url("/1k") if i % 2 == 0 else o.url(f"/o{i}")
        r = curl(m.port, url)
        assert r.returncode == 0, r.stderr
    wait_until(lambda: len(squid.requests("GET")) >= 6, timeout=5, what="6 GETs in squid's log")
    conns = {g[0] for g in squid.requests("GET")}
    assert len(conns) == 1, f"requests to two origins used {len(conns)} connections to squid: {squid.log_lines()}"


@pytest.mark.parametrize("how", ["absolute-form", "intercepted", "client-tunnel"])
def test_squid_parent_https_goes_through_connect(muxd, nginx_tls, pki, squid, how):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    c = route(squid.url(), ca_file=pki.ca_cert)
    if how == "intercepted":
        c = conf(c, {"intercept": {"ports": nginx_tls.port}})
    elif how == "client-tunnel":
        c = conf(c, {"muxd": {"connect_ports": f"443 {nginx_tls.port}"}, "intercept": {"enabled": "off"}})
    m = muxd(c)
    if how == "absolute-form":
        resp = absolute_get(m, nginx_tls.url("/1k"))
        assert resp.status == 200, resp
        assert resp.body == ONE_K
    else:
        cafile = m.state_dir / "ca.pem" if how == "intercepted" else pki.ca_cert
        code, status, body, err = curl_status(m, nginx_tls.url("/1k"), "--cacert", str(cafile))
        assert (code, status) == (0, 200), err
        assert body == ONE_K
    wait_until(lambda: nginx_tls.log_lines(), timeout=5, what="nginx access log")
    assert len(nginx_tls.log_lines()) == 1
    m.stop()  # ends the tunnel: squid logs a CONNECT when it closes
    want = nginx_tls.authority
    wait_until(lambda: squid.requests("CONNECT", want), timeout=10, what="CONNECT in squid's log")
    connects = squid.requests("CONNECT", want)
    assert len(connects) == 1 and connects[0][3] == "200", squid.log_lines()
    # muxd never handed the https:// URL itself to squid
    assert not [f for f in squid.log_lines() if f[2].startswith("https://")], squid.log_lines()


# --------------------------------------------------------------------------
# 2. nghttpx (HTTP/2 proxy mode) as an https:// parent


@pytest.mark.parametrize("how", ["http", "intercepted", "absolute-form-https", "client-tunnel"])
def test_https_parent_nghttpx(muxd, nginx, nginx_tls, pki, nghttpx, stream_server, how):
    """nghttpx in HTTP/2 proxy mode (TLS with the test PKI, trusted through
    proxy_ca_file) as the parent: plain http requests, https origins (muxd's
    TLS to nginx inside a CONNECT) and a client's raw tunnel all work."""
    (nginx.root / "1k").write_bytes(ONE_K)
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    echo = stream_server(echo_stream)
    m = muxd(
        conf(
            route(f"https://{nghttpx.authority}", proxy_ca_file=pki.ca_cert, ca_file=pki.ca_cert),
            {"muxd": {"connect_ports": f"443 {echo.port}"}, "intercept": {"ports": nginx_tls.port}},
        ),
        args=["-v"],
    )
    if how == "http":
        code, status, body, err = curl_status(m, nginx.url("/1k"), timeout=10)
        assert (code, status) == (0, 200), err
        assert body == ONE_K
        wait_until(lambda: nghttpx.log_lines(), timeout=5, what="nghttpx's access log")
        assert [f[2] for f in nghttpx.log_lines()][0].startswith(f"GET {nginx.url('/1k')} "), nghttpx.log_lines()
        return
    if how == "intercepted":
        local_ca = str(m.state_dir / "ca.pem")
        code, status, body, err = curl_status(m, nginx_tls.url("/1k"), "--cacert", local_ca, timeout=10)
        assert (code, status) == (0, 200), err
        assert body == ONE_K
        target = nginx_tls.authority
    elif how == "absolute-form-https":
        resp = absolute_get(m, nginx_tls.url("/1k"), timeout=10)
        assert resp.status == 200, resp
        assert resp.body == ONE_K
        target = nginx_tls.authority
    else:
        resp, reader = open_tunnel(m.port, echo.authority, timeout=10)
        with reader.sock:
            assert resp.status == 200, resp
            reader.sock.sendall(b"through nghttpx")
            got = bytes(reader.buf)
            while len(got) < 15:
                data = reader.sock.recv(100)
                assert data, f"EOF after {got!r}"
                got += data
            assert got == b"through nghttpx"
        target = echo.authority
    m.stop()  # nghttpx and squid log a CONNECT when its tunnel ends
    wait_until(
        lambda: [f for f in nghttpx.log_lines() if f[2].startswith(f"CONNECT {target} ")],
        timeout=10,
        what="the CONNECT in nghttpx's log",
    )
    # and nghttpx really passed it on to its squid
    wait_until(lambda: nghttpx.squid.requests("CONNECT", target), timeout=5, what="the CONNECT in squid's log")


def test_https_parent_untrusted_without_proxy_ca_file(muxd, nginx, nghttpx):
    """The parent's certificate is checked: without proxy_ca_file (the system
    store does not know the test CA) the request fails with 502."""
    (nginx.root / "1k").write_bytes(ONE_K)
    m = muxd(route(f"https://{nghttpx.authority}"))
    code, status, body, err = curl_status(m, nginx.url("/1k"))
    assert status == 502, (code, status, body, err)
    text = one_line(body.decode(errors="replace"))
    assert nghttpx.authority in text, text
    assert not nghttpx.log_lines()


def echo_nine_then_close(sock):
    """StreamServer handler: echo 9 bytes, then close: the tunnel ends from
    the far side (nghttpx does not pass a client's half-close on to an
    HTTP/1 backend, so a tunnel that the client ends by half-closing would
    never end there)."""
    got = b""
    while len(got) < 9:
        data = sock.recv(9 - len(got))
        if not data:
            return
        got += data
    sock.sendall(got)


def test_https_parent_h2_multiplexes_tunnels_then_idles_out(muxd, pki, nghttpx, stream_server):
    """Ten concurrent tunnels to an HTTP/2 proxy travel as streams of one TCP
    connection; when they end the parent connection is idle and leaves the
    pool after idle_timeout."""
    target = stream_server(echo_nine_then_close)
    m = muxd(
        conf(
            route(f"https://{nghttpx.authority}", proxy_ca_file=pki.ca_cert),
            {"muxd": {"connect_ports": f"443 {target.port}"}, "pool": {"idle_timeout": "2s"}},
        ),
        args=["-v"],
    )
    socks = []
    try:
        for i in range(10):
            resp, reader = open_tunnel(m.port, target.authority)
            socks.append(reader.sock)
            assert resp.status == 200, resp
            assert not reader.buf
        # all ten are open at once (the target counts an accept in its own
        # thread, maybe after the 200 came back); each carries its own bytes
        wait_until(lambda: target.connections == 10, timeout=5, what="10 connections at the target")
        for i, s in enumerate(socks):
            s.sendall(b"tunnel %02d" % i)
        for i, s in enumerate(socks):
            got = b""
            while len(got) < 9:
                data = s.recv(100)
                assert data, f"tunnel {i}: EOF after {got!r}"
                got += data
            assert got == b"tunnel %02d" % i
        # the far ends closed: every client sees the end of its tunnel
        for i, s in enumerate(socks):
            s.settimeout(5)
            try:
                rest = s.recv(100)
            except socket.timeout:
                raise AssertionError(f"tunnel {i}: the far end closed, the client saw no EOF within 5s") from None
            assert rest == b"", f"tunnel {i}: {rest!r}"
    finally:
        for s in socks:
            s.close()
    wait_until(
        lambda: len([f for f in nghttpx.log_lines() if f[2].startswith("CONNECT ")]) >= 10,
        timeout=10,
        what="10 CONNECTs in nghttpx's log",
    )
    connects = [f for f in nghttpx.log_lines() if f[2].startswith("CONNECT ")]
    conns = {f[0] for f in connects}
    alpns = sorted({f[1] for f in connects})
    assert len(conns) == 1, (
        f"10 concurrent tunnels used {len(conns)} TCP connections to nghttpx (ALPN {alpns}); "
        "expected one HTTP/2 connection carrying them as streams"
    )
    assert alpns == ["h2"], alpns
    # the parent connection is now idle in the pool ...
    wait_until(
        lambda: m.metrics().sum("muxd_upstream_connections", state="idle") >= 1,
        timeout=1.5,
        what="the parent connection to become idle",
    )
    evicted = m.metrics().value("muxd_pool_evictions_total", reason="idle_timeout")
    # ... and leaves it after idle_timeout (2s)
    wait_until(
        lambda: m.metrics().sum("muxd_upstream_connections") == 0,
        timeout=5,
        what="the idle parent connection to be evicted",
    )
    assert m.metrics().value("muxd_pool_evictions_total", reason="idle_timeout") >= evicted + 1


# --------------------------------------------------------------------------
# 3. SOCKS5 (microsocks)

SOCKS_USER = "bob"
SOCKS_PASS = "p@ss:w/rd"
SOCKS_PASS_ENCODED = "p%40ss%3Aw%2Frd"


def test_socks5_user_password(muxd, nginx, microsocks):
    (nginx.root / "1k").write_bytes(ONE_K)
    ms = microsocks(SOCKS_USER, SOCKS_PASS)
    good = muxd(route(f"socks5://{SOCKS_USER}:{SOCKS_PASS_ENCODED}@{ms.authority}"))
    code, status, body, err = curl_status(good, nginx.url("/1k"))
    assert (code, status) == (0, 200), (err, body)
    assert body == ONE_K
    assert ms.targets() == [nginx.authority]

    bad = muxd(route(f"socks5://{SOCKS_USER}:wrong@{ms.authority}"))
    t0 = time.monotonic()
    code, status, body, err = curl_status(bad, nginx.url("/1k"))
    assert status == 502, (code, status, body, err)
    assert time.monotonic() - t0 < 5
    text = one_line(body.decode(errors="replace"))
    assert "authentication" in text.lower(), text
    assert ms.authority in text, text
    assert len(nginx.log_lines()) == 1  # only the good request reached nginx


def test_socks5_without_credentials_when_required(muxd, nginx, microsocks):
    ms = microsocks(SOCKS_USER, SOCKS_PASS)
    m = muxd(route(f"socks5://{ms.authority}"))
    code, status, body, err = curl_status(m, nginx.url("/"))
    assert status == 502, (code, status, body, err)
    text = one_line(body.decode(errors="replace"))
    assert "authentication" in text.lower(), text
    assert not nginx.log_lines()


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_vs_socks5h_who_resolves(muxd, nginx, microsocks, scheme):
    """socks5h hands the host name to the proxy, socks5 resolves it in muxd
    and sends an address.  Observed two ways:

    * a name both sides resolve to 127.0.0.1 (from /etc/hosts): microsocks
      logs the target it was asked for, a name (socks5h) or 127.0.0.1 (socks5);
    * api.localhost: muxd maps *.localhost to loopback itself, getaddrinfo in
      microsocks cannot resolve it.  With socks5h it reaches microsocks as a
      name and fails there before any connection (reply 1 "general SOCKS
      server failure", 502).  With socks5 muxd resolves it and sends an
      address: 127.0.0.1 works; ::1 (which address muxd picks is its own
      business) reaches microsocks, which tries it and is refused (reply 5,
      "connection refused by destination host": nginx is on 127.0.0.1 only)."""
    (nginx.root / "1k").write_bytes(ONE_K)
    name = loopback_name()
    if name is None:
        pytest.skip("no host name maps to 127.0.0.1 alone in /etc/hosts")
    ms = microsocks()
    m = muxd(route(f"{scheme}://{ms.authority}"), args=["-v"])
    code, status, body, err = curl_status(m, f"http://{name}:{nginx.port}/1k")
    assert (code, status) == (0, 200), (err, body)
    assert body == ONE_K
    expected = f"{name}:{nginx.port}" if scheme == "socks5h" else f"127.0.0.1:{nginx.port}"
    assert ms.targets() == [expected], ms.targets()

    code, status, body, err = curl_status(m, f"http://api.localhost:{nginx.port}/1k")
    text = body.decode(errors="replace")
    if scheme == "socks5h":
        # the name reached microsocks, whose getaddrinfo cannot resolve it
        assert status == 502, (code, status, body, err)
        text = one_line(text)
        assert f"SOCKS5 proxy {ms.authority}" in text, text
        assert re.search(r"general SOCKS server failure|host unreachable", text), text
        assert ms.targets() == [expected], "microsocks connected somewhere for api.localhost"
    elif status == 200:
        # muxd resolved it and sent 127.0.0.1
        targets = ms.targets()
        assert targets == [expected, expected], targets
    else:
        # muxd resolved it and sent ::1 (nginx listens on 127.0.0.1 only):
        # microsocks could try that address and was refused, where a name it
        # cannot resolve would have failed before connecting
        assert status == 502, (code, status, body, err)
        assert "connection refused by destination host" in one_line(text), text


def test_socks5_reply_code_meaning_in_502(muxd, microsocks):
    """A target refused behind the SOCKS proxy: the reply code's meaning
    reaches the client."""
    ms = microsocks()
    port = closed_port()
    m = muxd(route(f"socks5://{ms.authority}"))
    code, status, body, err = curl_status(m, f"http://{LOCALHOST}:{port}/")
    assert status == 502, (code, status, body, err)
    text = one_line(body.decode(errors="replace"))
    assert ms.authority in text, text
    assert re.search(r"refused|general SOCKS server failure|unreachable", text), text


# --------------------------------------------------------------------------
# 4. chains, failures, 407, proxy = env


@pytest.mark.parametrize("order", ["http-then-socks5", "socks5h-then-http"])
def test_two_hop_chain(muxd, nginx, squid, microsocks, order):
    (nginx.root / "1k").write_bytes(ONE_K)
    ms = microsocks()
    if order == "http-then-socks5":
        proxy = f"{squid.url()} socks5://{ms.authority}"
    else:
        proxy = f"socks5h://{ms.authority} {squid.url()}"
    m = muxd(route(proxy))
    code, status, body, err = curl_status(m, nginx.url("/1k"))
    assert (code, status) == (0, 200), (err, body)
    assert body == ONE_K
    if order == "http-then-socks5":
        # muxd -> squid (CONNECT to microsocks) -> microsocks -> nginx
        assert ms.targets() == [nginx.authority]
        m.stop()
        wait_until(lambda: squid.requests("CONNECT", ms.authority), timeout=10, what="CONNECT in squid's log")
        assert not squid.requests("GET"), squid.log_lines()
    else:
        # muxd -> microsocks (to squid) -> squid (absolute-form GET) -> nginx
        assert ms.targets() == [squid.authority]
        wait_until(lambda: squid.requests("GET", nginx.url("/1k")), timeout=5, what="GET in squid's log")
    assert len(nginx.log_lines()) == 1


@pytest.mark.parametrize("scheme", ["http", "https", "socks5", "socks5h"])
def test_parent_down_is_502_at_once(muxd, nginx, pki, scheme):
    port = closed_port()
    m = muxd(route(f"{scheme}://{LOCALHOST}:{port}", proxy_ca_file=pki.ca_cert))
    t0 = time.monotonic()
    code, status, body, err = curl_status(m, nginx.url("/"))
    elapsed = time.monotonic() - t0
    assert status == 502, (code, status, body, err)
    assert elapsed < 3, f"took {elapsed:.1f}s"
    text = one_line(body.decode(errors="replace"))
    assert f"proxy {LOCALHOST}:{port}: connection refused" in text, text
    assert nginx.authority in text, f"the body does not name the origin: {text}"
    assert not nginx.log_lines()


def test_parent_down_tunnel_is_502_naming_it(muxd, stream_server):
    echo = stream_server(echo_stream)
    port = closed_port()
    m = muxd(conf(route(f"http://{LOCALHOST}:{port}"), {"muxd": {"connect_ports": f"443 {echo.port}"}}))
    resp, reader = open_tunnel(m.port, echo.authority)
    reader.sock.close()
    assert resp.status == 502, resp
    text = one_line(resp.text)
    assert f"proxy {LOCALHOST}:{port}: connection refused" in text, text
    assert echo.connections == 0


def test_parent_407_is_502_without_retry(muxd, stream_server):
    fake = FakeParent(stream_server, always_407)
    target = f"{LOCALHOST}:{closed_port()}"
    port = target.rsplit(":", 1)[1]
    m = muxd(conf(route(f"http://carol:n0t-it@{fake.authority}"), {"muxd": {"connect_ports": f"443 {port}"}}))
    t0 = time.monotonic()
    resp, reader = open_tunnel(m.port, target)
    reader.sock.close()
    assert resp.status == 502, resp
    assert time.monotonic() - t0 < 3
    text = one_line(resp.text)
    assert fake.authority in text, text
    assert "407" in text and "Proxy Authentication Required" in text, text
    # nothing to wait for: a retry would follow the 407 at once, so 1 s (a
    # long time on loopback) gives a retry loop room to show itself
    time.sleep(1.0)
    assert fake.request_lines() == [f"CONNECT {target} HTTP/1.1"], fake.request_lines()
    assert fake.connections == 1
    # the URL's credentials went to the parent as Basic
    assert fake.header(0, "Proxy-Authorization") == ["Basic " + base64.b64encode(b"carol:n0t-it").decode()]


def test_parent_407_on_https_request_is_502(muxd, nginx_tls, pki, stream_server):
    """An https:// origin behind a parent that asks for credentials: one
    CONNECT, then 502 with the parent's status line."""
    fake = FakeParent(stream_server, always_407)
    m = muxd(route(f"http://{fake.authority}", ca_file=pki.ca_cert))
    resp = absolute_get(m, nginx_tls.url("/"))
    assert resp.status == 502, resp
    text = one_line(resp.text)
    assert fake.authority in text and "407" in text, text
    time.sleep(1.0)  # room for a retry loop to show itself (see above)
    assert fake.request_lines() == [f"CONNECT {nginx_tls.authority} HTTP/1.1"], fake.request_lines()
    assert not nginx_tls.log_lines()


def test_proxy_authorization_on_absolute_form_requests(muxd, origin, stream_server):
    """The last-hop HTTP parent gets plain http:// requests in absolute form
    with Proxy-Authorization from the URL (percent-decoded); the origin
    never sees it."""
    o = origin()

    def forward_ok(head):
        body = b"from the fake parent"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), True

    fake = FakeParent(stream_server, forward_ok)
    m = muxd(route(f"http://dave:s%3Acret%40x@{fake.authority}"))
    code, status, body, err = curl_status(m, o.url("/abs"))
    assert (code, status) == (0, 200), err
    assert body == b"from the fake parent"
    assert fake.request_lines() == [f"GET {o.url('/abs')} HTTP/1.1"]
    assert fake.header(0, "Proxy-Authorization") == ["Basic " + base64.b64encode(b"dave:s:cret@x").decode()]
    assert not o.requests


def test_proxy_env_uses_the_environment(muxd, nginx, squid, monkeypatch):
    (nginx.root / "1k").write_bytes(ONE_K)
    for k in list(os.environ):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("https_proxy", squid.url())
    monkeypatch.setenv("http_proxy", squid.url())
    m = muxd(route("env"))  # muxd inherits os.environ
    r = curl(m.port, nginx.url("/1k"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ONE_K
    wait_until(lambda: squid.requests("GET", nginx.url("/1k")), timeout=5, what="the GET in squid's log")


def test_proxy_env_upper_case_and_no_proxy(muxd, nginx, origin, squid, monkeypatch):
    (nginx.root / "1k").write_bytes(ONE_K)
    o = origin()
    for k in list(os.environ):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HTTP_PROXY", squid.url())
    monkeypatch.setenv("NO_PROXY", "example.invalid,localhost")
    m = muxd(route("env"))
    r = curl(m.port, nginx.url("/1k"))
    assert r.returncode == 0, r.stderr
    r = curl(m.port, f"http://localhost:{o.port}/direct")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: squid.requests("GET", nginx.url("/1k")), timeout=5, what="the GET in squid's log")
    squid.caught_up(nginx.url("/1k?marker"))
    assert not squid.requests("GET", "/direct"), squid.log_lines()
    assert [q.target for q in o.requests] == ["/direct"]
    assert not o.requests[0].headers.get("via", "").count("squid"), o.requests[0].headers


@pytest.mark.parametrize("var", ["http_proxy", "HTTPS_PROXY"])
def test_proxy_env_pointing_at_muxd_is_refused(tmp_path, var):
    port = free_port()
    path = tmp_path / "muxd.conf"
    path.write_text(render_conf({"muxd": {"listen": f"{LOCALHOST}:{port}"}, "route *": {"proxy": "env"}}))
    env = clean_env()
    env[var] = f"http://{LOCALHOST}:{port}"
    r = subprocess.run(
        [MUXD_BIN, "-t", "-c", str(path), "-S", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        timeout=20,
    )
    err = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0, err
    assert "muxd itself" in err or f"{LOCALHOST}:{port}" in err, err
    assert "proxy" in err, err
    # pointing somewhere else is fine
    env[var] = f"http://{LOCALHOST}:{closed_port()}"
    r = subprocess.run(
        [MUXD_BIN, "-t", "-c", str(path), "-S", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        timeout=20,
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")


# --------------------------------------------------------------------------
# 5. credentials stay secret; routes select parents per host


def test_credentials_never_logged_nor_in_metrics(muxd, nginx, nginx_tls, pki, squid, microsocks):
    (nginx.root / "1k").write_bytes(ONE_K)
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    secret_http = "Sq1d-Secr3t-xyzzy"
    ms = microsocks(SOCKS_USER, SOCKS_PASS)
    m = muxd(
        {
            "muxd": {"access_log": "stderr", "log_level": "debug"},
            "route *": {"proxy": f"http://alice:{secret_http}@{squid.authority}", "ca_file": pki.ca_cert},
            f"route {nginx.authority}": {"proxy": f"socks5h://{SOCKS_USER}:{SOCKS_PASS_ENCODED}@{ms.authority}"},
        },
        args=["-v"],
    )
    code, status, body, err = curl_status(m, nginx.url("/1k"))  # via microsocks
    assert (code, status) == (0, 200), err
    resp = absolute_get(m, nginx_tls.url("/1k"))  # CONNECT via squid with Proxy-Authorization
    assert resp.status == 200, resp
    assert ms.targets() == [f"{LOCALHOST}:{nginx.port}"]
    # a failing authentication is logged too, still without the password
    bad = muxd(
        {"route *": {"proxy": f"socks5://{SOCKS_USER}:{SOCKS_PASS_ENCODED}-wrong@{ms.authority}"}}, args=["-v"]
    )
    code, status, body, err = curl_status(bad, nginx.url("/1k"))
    assert status == 502, (code, status, body, err)
    assert SOCKS_PASS not in body.decode(errors="replace")

    secrets = [
        secret_http,
        SOCKS_PASS,
        SOCKS_PASS_ENCODED,
        base64.b64encode(f"alice:{secret_http}".encode()).decode(),
    ]
    for inst in (m, bad):
        pages = {
            "log": inst.log(),
            "/metrics": inst.admin("/metrics").text,
            "/status.json": inst.admin("/status.json").text,
            "/": inst.admin("/").text,
        }
        assert "127.0.0.1" in pages["log"]  # the debug log did talk about connections
        for where, text in pages.items():
            for s in secrets:
                assert s not in text, f"a proxy credential appears in the {where} of {inst.dir.name}"


def test_route_pattern_selects_parent_per_host(muxd, nginx, origin, squid):
    (nginx.root / "1k").write_bytes(ONE_K)
    o = origin()
    m = muxd({f"route {nginx.authority}": {"proxy": squid.url()}})
    r = curl(m.port, nginx.url("/1k"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ONE_K
    r = curl(m.port, o.url("/elsewhere"))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: squid.requests("GET", nginx.url("/1k")), timeout=5, what="the GET in squid's log")
    squid.caught_up(nginx.url("/1k?marker"))
    assert [f[2] for f in squid.log_lines() if f[1] != "HEAD"] == [nginx.url("/1k")], squid.log_lines()
    assert [q.target for q in o.requests] == ["/elsewhere"]  # origin form: straight from muxd
    assert "squid" not in (o.requests[0].headers.get("via") or "")


def test_reload_changes_parent_and_pool_key(muxd, nginx, squid):
    """Every hop is part of the pool key: after a reload routes the origin
    through squid, the idle direct connection is not reused for it, and
    back again."""
    (nginx.root / "1k").write_bytes(ONE_K)
    m = muxd()
    assert curl(m.port, nginx.url("/1k")).returncode == 0
    m.reload(route(squid.url()), wait=True)
    assert curl(m.port, nginx.url("/1k?via=squid")).returncode == 0
    wait_until(lambda: squid.requests("GET", "via=squid"), timeout=5, what="the GET in squid's log")
    m.reload(route("direct"), wait=True)
    assert curl(m.port, nginx.url("/1k?direct")).returncode == 0
    # a check for absence: once nginx has logged the GET, and squid a
    # request sent after it, a GET wrongly sent through squid is in its log
    wait_until(lambda: any("?direct" in f[2] for f in nginx.log_lines()), timeout=5,
               what="the direct GET in nginx's log")
    squid.caught_up(nginx.url("/1k?marker"))
    assert not squid.requests("GET", "?direct"), squid.log_lines()
    assert len(squid.requests("GET")) == 1


def test_https_parent_h2_tunnel_window_grows_big_download_intact(muxd, pki, nghttpx, stream_server, relay):
    """A tunnel on an HTTP/2 parent is a stream like any other: behind a
    round trip to the parent its receive window grows while the client
    keeps up, and 32 MiB through it arrive intact."""
    import hashlib

    from support import pattern_chunks

    size = 32 * 1024 * 1024

    def send_big(sock):
        if sock.recv(1) != b"g":
            return
        for chunk in pattern_chunks(size, seed=77):
            sock.sendall(chunk)

    expected = hashlib.sha256()
    for chunk in pattern_chunks(size, seed=77):
        expected.update(chunk)
    target = stream_server(send_big)
    port = relay(nghttpx.port, 5)
    m = muxd(
        conf(
            route(f"https://{LOCALHOST}:{port}", proxy_ca_file=pki.ca_cert),
            {"muxd": {"connect_ports": f"443 {target.port}"}},
        ),
        args=["-v"],
    )
    resp, reader = open_tunnel(m.port, target.authority, timeout=60)
    assert resp.status == 200, resp
    got = hashlib.sha256(reader.buf)
    received = len(reader.buf)
    with reader.sock as s:
        s.sendall(b"g")
        while received < size:
            data = s.recv(1 << 20)
            assert data, f"EOF after {received} bytes"
            got.update(data)
            received += len(data)
    assert received == size
    assert got.hexdigest() == expected.hexdigest()
    assert re.search(r"h2: stream \d+ to \S+: receive window \d+ KiB", m.log()), "the tunnel's window never grew"
