"""Fixtures for the muxd integration tests.

* ``muxd``   factory: muxd(conf, args) starts a daemon on an ephemeral port
             and returns a ``Muxd`` (.port, .proc, .pid, .stderr, .metrics(),
             .reload(), .stop()).  conf is INI text or {section: {key: value}}.
* ``nginx``  a running nginx (files are served from ``nginx.root``; its access
             log records ``$connection`` so tests can count connections).
* ``origin`` factory: origin(handler) starts a scriptable python origin
             (support.Origin).
* ``pki``    (session) a test CA, a leaf it signs for 127.0.0.1/localhost and
             a self-signed certificate (support.PKI).
* ``nginx_tls``, ``nginx_selfsigned``  nginx serving HTTPS with the leaf
             (CA-signed) or the self-signed certificate; .url() gives https.
             ``tls_nginx_factory(cert, protocols)`` starts more of them.
* ``stream_server`` factory: stream_server(handler, host=...) starts a raw
             TCP server (support.StreamServer), e.g. a CONNECT target.
* ``nginx_h2`` nginx serving HTTPS and HTTP/2 (``listen ... ssl http2``);
             ``tls_nginx_factory(http2=True)`` starts more of them.
* ``h3_server`` factory: h3_server() starts gtlsserver (ngtcp2-server), an
             HTTP/3 origin on UDP serving files from ``.root`` with the test
             PKI (support.H3Server); ``tls_nginx_factory(extra=...)`` adds
             directives (e.g. ``add_header Alt-Svc ...``) to nginx.
* ``h2_origin`` factory: h2_origin(handler, **options) starts a scripted
             HTTP/2 origin over TLS with the test PKI (h2origin.H2Origin).

Each test gets its own processes on fresh loopback ports; all of them are
stopped at teardown.  When a test fails, the stderr of its muxd instances and
nginx's logs are attached to the report.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from h2origin import H2Origin, ok_handler
from support import (
    GTLSSERVER,
    LOCALHOST,
    MUXD_BIN,
    SANITIZE,
    H3Server,
    HTTPReader,
    Metrics,
    Origin,
    StreamServer,
    connect,
    echo_handler,
    free_port,
    make_pki,
    require_tool,
    wait_until,
)

STARTUP_TIMEOUT = 30.0 if SANITIZE else 10.0
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

# Defaults every test daemon gets unless its config says otherwise: a short
# shutdown_timeout keeps teardown quick when a test leaves a client hanging.
DEFAULT_CONF = {"muxd": {"shutdown_timeout": "2s"}}


def render_conf(conf):
    """INI text from {section: {key: value}} (merged over DEFAULT_CONF), or
    the text itself when conf is a string."""
    if isinstance(conf, str):
        return conf
    sections = {s: dict(kv) for s, kv in DEFAULT_CONF.items()}
    for section, kv in (conf or {}).items():
        sections.setdefault(section, {}).update(kv)
    out = []
    for section, kv in sections.items():
        out.append(f"[{section}]")
        out += [f"{k} = {v}" for k, v in kv.items()]
        out.append("")
    return "\n".join(out)


def attach_log(request, title, path):
    request.node.__dict__.setdefault("_log_files", []).append((title, Path(path)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, path in getattr(item, "_log_files", []):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if len(text) > 20000:
                text = "[...]\n" + text[-20000:]
            rep.sections.append((f"{title} ({path})", text))


# --------------------------------------------------------------------------
# muxd


class Muxd:
    def __init__(self, workdir, conf=None, args=(), preexec_fn=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True)
        self.conf_path = self.dir / "muxd.conf"
        self.state_dir = self.dir / "state"
        self.state_dir.mkdir()
        self.stderr = self.dir / "stderr.log"
        self.args = list(args)
        self.preexec_fn = preexec_fn  # run in the child before exec (e.g. setrlimit)
        self.proc = None
        self.port = None
        self.write_conf(conf)

    def write_conf(self, conf):
        self.conf_path.write_text(render_conf(conf))

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.stderr.read_text(errors="replace")

    def start(self):
        cmd = [MUXD_BIN, "-c", str(self.conf_path), "-S", str(self.state_dir), "-l", f"{LOCALHOST}:0"] + self.args
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"muxd exited with {self.proc.returncode} at startup:\n{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"muxd did not log 'listening on 127.0.0.1:PORT' within {STARTUP_TIMEOUT}s")

    def proxy_url(self):
        return f"http://{LOCALHOST}:{self.port}"

    def via_token(self):
        """This instance's Via entry: "1.1 muxd-" and 8 hex digits of the id
        kept in STATE/instance-id."""
        return "1.1 muxd-" + (self.state_dir / "instance-id").read_text().strip()[:8]

    def admin(self, path):
        """GET path from muxd's own admin endpoint (origin-form request)."""
        with connect(self.port, timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOCALHOST}:{self.port}\r\nConnection: close\r\n\r\n".encode())
            return HTTPReader(s).read_response()

    def metrics(self):
        resp = self.admin("/metrics")
        assert resp.status == 200, resp
        return Metrics.parse(resp.text)

    def status(self):
        """/status.json, parsed (connections, altsvc, counters)."""
        resp = self.admin("/status.json")
        assert resp.status == 200, resp
        return resp.json()

    def reload(self, conf=None, wait=False):
        """Optionally rewrite the config file, then SIGHUP.  wait: return
        only once muxd has logged the outcome (applied, or kept the running
        configuration)."""
        before = self.reload_outcomes()
        if conf is not None:
            self.write_conf(conf)
        self.proc.send_signal(signal.SIGHUP)
        if wait:
            wait_until(lambda: self.reload_outcomes() > before, timeout=10, what="muxd to finish the reload")

    def reload_outcomes(self):
        """How many reloads muxd has finished (applied or refused) so far."""
        text = self.log()
        return text.count("configuration reloaded") + text.count("keeping the running configuration")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal muxd and wait for it to exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def sanitizer_report(self):
        text = self.log()
        return text if any(marker in text for marker in SANITIZER_MARKERS) else None


@pytest.fixture
def muxd(request, tmp_path):
    """Factory: muxd(conf=None, args=(), preexec_fn=None) -> started Muxd
    (preexec_fn runs in the child before exec, e.g. to lower RLIMIT_NOFILE)."""
    if not os.access(MUXD_BIN, os.X_OK):
        pytest.fail(f"muxd binary {MUXD_BIN} not found (set MUXD_BIN or run make)")
    instances = []

    def start(conf=None, args=(), preexec_fn=None):
        m = Muxd(tmp_path / f"muxd{len(instances)}", conf, args, preexec_fn)
        instances.append(m)
        attach_log(request, "muxd stderr", m.stderr)
        return m.start()

    yield start
    reports = []
    for m in instances:
        if m.proc is not None:
            m.stop(timeout=10.0)
            if m.sanitizer_report():
                reports.append(str(m.stderr))
    if reports:
        pytest.fail(f"sanitizer reported errors, see {reports}")


# --------------------------------------------------------------------------
# nginx

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format conns '$connection $connection_requests "$request" $status $body_bytes_sent $server_protocol';
    access_log {dir}/access.log conns;
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    default_type application/octet-stream;
    keepalive_timeout 120s;
    keepalive_requests 100000;
    server {{
        listen {LOCALHOST}:{port}{listen_opts};
        root {dir}/www;
{server_extra}    }}
}}
"""


NGINX_TLS_SERVER = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        ssl_session_cache shared:SSL:1m;
        ssl_session_timeout 5m;
        ssl_session_tickets on;
"""


class Nginx:
    def __init__(self, workdir, tls=None, tls_protocols="TLSv1.2 TLSv1.3", http2=False, extra=""):
        """tls: (certificate, key) paths to serve HTTPS instead of HTTP;
        tls_protocols: nginx's ssl_protocols; http2: offer h2 by ALPN;
        extra: more directives for the server block (e.g. add_header,
        location blocks)."""
        self.dir = Path(workdir)
        self.extra = extra
        self.tls = tls
        self.http2 = http2
        self.tls_protocols = tls_protocols
        self.scheme = "https" if tls else "http"
        self.root = self.dir / "www"
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        (self.dir / "tmp").mkdir(parents=True)
        self.root.mkdir()
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(5):
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            user = "user root;" if os.geteuid() == 0 else ""  # tmp_path is 0700
            listen_opts, server_extra = "", ""
            if self.tls:
                listen_opts = " ssl http2" if self.http2 else " ssl"
                server_extra = NGINX_TLS_SERVER.format(
                    cert=self.tls[0], key=self.tls[1], protocols=self.tls_protocols
                )
            if self.extra:
                server_extra += "".join(f"        {line}\n" for line in self.extra.splitlines())
            conf.write_text(
                NGINX_CONF.format(
                    dir=self.dir,
                    port=self.port,
                    user=user,
                    LOCALHOST=LOCALHOST,
                    listen_opts=listen_opts,
                    server_extra=server_extra,
                )
            )
            with open(self.dir / "stderr.log", "ab") as err:
                self.proc = subprocess.Popen(
                    ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.error_log)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    connect(self.port, timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            self.stop()  # port taken by someone else: try another
        pytest.fail(f"nginx did not start; see {self.error_log}")

    def url(self, path="/"):
        return f"{self.scheme}://{LOCALHOST}:{self.port}{path}"

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def log_lines(self):
        if not self.access_log.exists():
            return []
        return [line.split(" ", 2) for line in self.access_log.read_text().splitlines() if line]

    def connections(self):
        """Distinct nginx connection serial numbers seen in the access log."""
        return {fields[0] for fields in self.log_lines()}

    def protocols(self):
        """$server_protocol of every access log line (HTTP/1.1, HTTP/2.0)."""
        return [fields[2].rsplit(" ", 1)[-1] for fields in self.log_lines()]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


@pytest.fixture
def nginx(request, tmp_path):
    ng = Nginx(tmp_path / "nginx")
    attach_log(request, "nginx error log", ng.error_log)
    ng.start()
    yield ng
    ng.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The test CA and certificates (created once per session)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_nginx_factory(request, tmp_path, pki):
    """Factory: tls_nginx_factory(cert=pki.leaf, protocols="TLSv1.2 TLSv1.3",
    http2=False, extra="") -> a started HTTPS nginx (extra: more directives
    for its server block)."""
    servers = []

    def start(cert=None, protocols="TLSv1.2 TLSv1.3", http2=False, extra=""):
        ng = Nginx(tmp_path / f"nginx_tls{len(servers)}", tls=cert or pki.leaf, tls_protocols=protocols, http2=http2,
                   extra=extra)
        servers.append(ng)
        attach_log(request, f"nginx error log ({ng.dir.name})", ng.error_log)
        return ng.start()

    yield start
    for ng in servers:
        ng.stop()


@pytest.fixture
def nginx_tls(tls_nginx_factory):
    """nginx serving HTTPS with a certificate signed by pki.ca_cert."""
    return tls_nginx_factory()


@pytest.fixture
def nginx_selfsigned(tls_nginx_factory, pki):
    """nginx serving HTTPS with a self-signed certificate."""
    return tls_nginx_factory(pki.self_signed)


@pytest.fixture
def nginx_h2(tls_nginx_factory):
    """nginx serving HTTPS with HTTP/2 (ALPN h2), certificate from pki."""
    return tls_nginx_factory(http2=True)


@pytest.fixture
def h3_server(request, tmp_path, pki):
    """Factory: h3_server(cert=pki.leaf, port=None, options=()) -> a started
    support.H3Server: gtlsserver serving .root over HTTP/3 on UDP
    127.0.0.1:.port."""
    require_tool(GTLSSERVER, "ngtcp2-server")
    servers = []

    def start(cert=None, port=None, options=()):
        srv = H3Server(tmp_path / f"h3server{len(servers)}", cert or pki.leaf, port=port, options=options)
        servers.append(srv)
        attach_log(request, f"gtlsserver log ({srv.dir.name})", srv.log_path)
        return srv.start()

    yield start
    for srv in servers:
        srv.stop()


# --------------------------------------------------------------------------
# python origins


@pytest.fixture
def origin():
    """Factory: origin(handler=echo_handler, auto_continue=True) -> Origin."""
    origins = []

    def start(handler=echo_handler, **kw):
        o = Origin(handler, **kw)
        origins.append(o)
        return o

    yield start
    for o in origins:
        o.stop()


@pytest.fixture
def stream_server():
    """Factory: stream_server(handler, host="127.0.0.1") -> StreamServer.
    Raises OSError when host cannot be bound (e.g. no ::1)."""
    servers = []

    def start(handler, host=LOCALHOST):
        srv = StreamServer(handler, host)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def h2_origin(pki):
    """Factory: h2_origin(handler=h2origin.ok_handler, alpn=("h2",),
    max_concurrent_streams=None, initial_window_size=None, ping="ack")
    -> a started h2origin.H2Origin (TLS with pki.leaf)."""
    origins = []

    def start(handler=ok_handler, **kw):
        o = H2Origin(pki, handler, **kw)
        origins.append(o)
        return o

    yield start
    for o in origins:
        o.stop()


@pytest.fixture
def h3_origin(request, tmp_path, pki):
    """Factory: h3_origin(cert=pki.leaf) -> a started h3origin.H3Origin
    (the scriptable HTTP/3 origin, tests/h3origin/h3origin.c)."""
    from h3origin import H3Origin

    origins = []

    def start(cert=None):
        o = H3Origin(tmp_path / f"h3origin{len(origins)}", cert or pki.leaf)
        origins.append(o)
        attach_log(request, f"h3origin log ({o.dir.name})", o.log_path)
        return o

    yield start
    for o in origins:
        o.stop()
