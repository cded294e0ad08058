"""Running as a service: the systemd units (verified, exposure score), the
sd_notify protocol (READY/RELOADING/STOPPING/STATUS/WATCHDOG on a datagram
socket the test listens on), socket activation (systemd-socket-activate),
make install/uninstall, and the man pages (mandoc lint; every configuration key
of the code documented in muxd.conf.5 and conf/muxd.conf, and nothing more).

These tests run without a systemd PID 1: `systemd-analyze verify` and
`systemd-analyze security --offline=true` only read unit files."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support import (LOCALHOST, MUXD_BIN, SANITIZE, HTTPReader, Metrics, clean_env, connect, curl, free_port,
                     require_tool)

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0 if SANITIZE else 10.0
CONF = "[muxd]\nshutdown_timeout = 2s\n[intercept]\nenabled = off\n"


def need(tool):
    require_tool(tool, {"mandoc": "mandoc", "makewhatis": "mandoc"}.get(tool, "systemd"))


# --------------------------------------------------------------------------
# helpers: a notify socket, a muxd with a given environment


class NotifySocket:
    """An AF_UNIX datagram socket standing in for the service manager."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"muxd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
            self.dir = None
        else:
            # a short path: sun_path holds 108 bytes
            self.dir = tempfile.mkdtemp(prefix="muxd-notify-", dir="/tmp")
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.messages = []  # every datagram, as {VAR: value}

    def recv(self, timeout):
        """The next datagram as a dict, or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.messages.append(msg)
        return msg

    def wait_for(self, var, value=None, timeout=10.0):
        """Messages received until one sets var (to value); returns that one."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {var}={value or '...'} within {timeout}s; got {self.messages}")
            msg = self.recv(left)
            if msg is not None and var in msg and (value is None or msg[var] == value):
                return msg

    def close(self):
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """muxd started with extra environment variables (and optionally a
    wrapper command such as systemd-socket-activate)."""

    def __init__(self, workdir, conf=CONF, env=None, wrapper=(), listen=f"{LOCALHOST}:0"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "muxd.conf"
        self.conf.write_text(conf)
        self.state = self.dir / "state"
        self.state.mkdir(exist_ok=True)
        self.stderr = self.dir / "stderr.log"
        cmd = list(wrapper) + [MUXD_BIN, "-c", str(self.conf), "-S", str(self.state)]
        if listen:
            cmd += ["-l", listen]
        full_env = clean_env()
        full_env.update(env or {})
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=full_env)
        self.port = None

    def log(self):
        return self.stderr.read_text(errors="replace")

    def wait_listening(self, suffix=""):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)" + re.escape(suffix), self.log())
            if m:
                self.port = int(m.group(1))
                return self.port
            if self.proc.poll() is not None:
                pytest.fail(f"muxd exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"muxd did not log 'listening on 127.0.0.1:PORT{suffix}':\n{self.log()}")

    def wait_log(self, text, timeout=STARTUP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the log (exit status {self.proc.poll()}):\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def admin_get(port, path="/metrics"):
    with connect(port, timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        return HTTPReader(s).read_response()


@pytest.fixture
def daemon(request, tmp_path):
    started = []

    def start(**kw):
        d = Daemon(tmp_path / f"muxd{len(started)}", **kw)
        started.append(d)
        request.node.__dict__.setdefault("_log_files", []).append(("muxd stderr", d.stderr))
        return d

    yield start
    for d in started:
        d.stop(10.0)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


# --------------------------------------------------------------------------
# sd_notify


def test_notify_ready_reload_status_stopping(daemon, notify_socket, origin):
    o = origin()
    d = daemon(env={"NOTIFY_SOCKET": notify_socket.env_value})
    ready = notify_socket.wait_for("READY", "1", timeout=STARTUP_TIMEOUT)
    # READY=1 means it can serve: connect right away, without waiting for the log
    port = d.wait_listening()
    resp = admin_get(port)
    assert resp.status == 200
    assert re.fullmatch(r"\d+ clients, \d+ upstream connections, \d+ requests", ready["STATUS"]), ready

    r = curl(port, o.url("/x"))
    assert r.returncode == 0, r.stderr

    d.proc.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", "1")
    assert "MONOTONIC_USEC" in reloading
    again = notify_socket.wait_for("READY", "1")
    assert re.fullmatch(r"\d+ clients, \d+ upstream connections, [1-9]\d* requests", again["STATUS"]), again
    assert "configuration reloaded" in d.log()
    assert admin_get(port).status == 200  # still serving after the reload

    d.proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", "1")
    assert "STATUS" in stopping
    assert d.proc.wait(15) == 0
    order = [k for msg in notify_socket.messages for k in msg if k in ("READY", "RELOADING", "STOPPING")]
    assert order == ["READY", "RELOADING", "READY", "STOPPING"], notify_socket.messages


def test_notify_abstract_socket(daemon):
    ns = NotifySocket(abstract=True)
    try:
        d = daemon(env={"NOTIFY_SOCKET": ns.env_value})
        ns.wait_for("READY", "1", timeout=STARTUP_TIMEOUT)
        assert admin_get(d.wait_listening()).status == 200
    finally:
        ns.close()


def test_watchdog(daemon, notify_socket):
    d = daemon(env={"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "200000"})
    notify_socket.wait_for("READY", "1", timeout=STARTUP_TIMEOUT)
    t0 = time.monotonic()
    notify_socket.wait_for("WATCHDOG", "1", timeout=0.5)
    notify_socket.wait_for("WATCHDOG", "1", timeout=0.5)
    assert time.monotonic() - t0 < 0.8
    assert d.proc.poll() is None


def test_watchdog_for_another_pid_is_ignored(daemon, notify_socket):
    daemon(env={"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    notify_socket.wait_for("READY", "1", timeout=STARTUP_TIMEOUT)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        msg = notify_socket.recv(deadline - time.monotonic())
        assert msg is None or "WATCHDOG" not in msg, msg


def test_no_notify_socket_still_serves(daemon):
    d = daemon()
    assert admin_get(d.wait_listening()).status == 200
    assert d.stop() == 0


# --------------------------------------------------------------------------
# socket activation


def test_socket_activation_serves_on_passed_socket(daemon, origin):
    need("systemd-socket-activate")
    o = origin()
    port, unused = free_port(), free_port()
    # the file's listen is not used: the socket comes from the "service manager"
    conf = f"[muxd]\nlisten = {LOCALHOST}:{unused}\nshutdown_timeout = 2s\n"
    d = daemon(conf=conf, wrapper=["systemd-socket-activate", "-l", f"{LOCALHOST}:{port}"], listen=None)
    d.wait_log(f"Listening on {LOCALHOST}:{port} as 3.")
    # the first connection starts muxd (as systemd does), which then serves it
    r = curl(port, o.url("/through-activated-socket"))
    assert r.returncode == 0, r.stderr
    assert b"/through-activated-socket" in r.stdout
    assert d.wait_listening(" (socket activation)") == port
    assert Metrics.parse(admin_get(port).text).sum("muxd_requests_total") >= 1
    with pytest.raises(OSError):
        connect(unused, timeout=2).close()

    # a reload never re-binds the passed socket, even when listen changed
    d.conf.write_text(f"[muxd]\nlisten = {LOCALHOST}:{free_port()}\nshutdown_timeout = 2s\n")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "configuration reloaded" in d.log()
    assert d.log().count("listening on") == 1, d.log()
    assert curl(port, o.url("/after-reload")).returncode == 0
    assert d.stop() == 0


def test_socket_activation_with_notify(daemon, notify_socket):
    need("systemd-socket-activate")
    port = free_port()
    d = daemon(
        wrapper=["systemd-socket-activate", "-l", f"{LOCALHOST}:{port}", "-E", f"NOTIFY_SOCKET={notify_socket.env_value}"],
        listen=None,
    )
    d.wait_log(f"Listening on {LOCALHOST}:{port} as 3.")
    assert admin_get(port).status == 200  # starts muxd, which answers
    notify_socket.wait_for("READY", "1", timeout=STARTUP_TIMEOUT)
    assert d.wait_listening(" (socket activation)") == port
    assert d.stop() == 0
    notify_socket.wait_for("STOPPING", "1")


def test_listen_fds_for_another_process_are_ignored(daemon):
    d = daemon(env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    port = d.wait_listening()
    assert "socket activation" not in d.log()
    assert admin_get(port).status == 200


# --------------------------------------------------------------------------
# make install / uninstall


def make(*args, check=True):
    """make in the repository against the binary under test (never rebuilt)."""
    build = os.path.dirname(os.path.abspath(MUXD_BIN))
    cmd = ["make", "-s", "--no-print-directory", "-C", str(ROOT), f"BUILD={build}", "-o", f"{build}/muxd", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


def files_under(d):
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if not p.is_dir())


INSTALLED = [
    "etc/muxd/muxd.conf",
    "usr/local/lib/systemd/system/muxd.service",
    "usr/local/lib/systemd/system/muxd.socket",
    "usr/local/sbin/muxd",
    "usr/local/share/man/man5/muxd.conf.5",
    "usr/local/share/man/man8/muxd.8",
]


def test_install_uninstall_leaves_nothing(tmp_path):
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}")
    assert files_under(dest) == INSTALLED
    service = (dest / "usr/local/lib/systemd/system/muxd.service").read_text()
    assert re.search(r"^ExecStart=/usr/local/sbin/muxd$", service, re.M), service
    assert "@SBINDIR@" not in service
    assert os.access(dest / "usr/local/sbin/muxd", os.X_OK)
    assert (dest / "etc/muxd/muxd.conf").read_bytes() == (ROOT / "conf/muxd.conf").read_bytes()
    make("install", f"DESTDIR={dest}")  # twice is fine
    make("uninstall", f"DESTDIR={dest}")
    assert files_under(dest) == []
    assert not (dest / "etc/muxd").exists()


def test_install_keeps_an_existing_config(tmp_path):
    dest = tmp_path / "dest"
    conf = dest / "etc/muxd/muxd.conf"
    conf.parent.mkdir(parents=True)
    mine = "[muxd]\nvia = off\n"
    conf.write_text(mine)
    make("install", f"DESTDIR={dest}")
    assert conf.read_text() == mine
    make("uninstall", f"DESTDIR={dest}")
    assert conf.read_text() == mine
    assert files_under(dest) == ["etc/muxd/muxd.conf"]


def test_install_prefix_usr_puts_units_in_lib(tmp_path):
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}", "PREFIX=/usr")
    service = (dest / "lib/systemd/system/muxd.service").read_text()
    assert re.search(r"^ExecStart=/usr/sbin/muxd$", service, re.M)
    assert (dest / "usr/sbin/muxd").exists()
    assert (dest / "usr/share/man/man8/muxd.8").exists()
    make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr")
    assert files_under(dest) == []


# --------------------------------------------------------------------------
# systemd units


@pytest.fixture
def installed_units(tmp_path):
    """The units installed under a prefix inside tmp_path (no DESTDIR), so that
    ExecStart= names a binary that exists: `systemd-analyze verify --root=`
    would also look for /bin/kill and sysinit.target inside the root, and a
    DESTDIR install names a binary that is not there yet."""
    need("systemd-analyze")
    prefix = tmp_path / "usr/local"
    make("install", f"PREFIX={prefix}", f"SYSCONFDIR={tmp_path / 'etc'}")
    units = prefix / "lib/systemd/system"
    return prefix, units / "muxd.service", units / "muxd.socket"


def test_units_verify(installed_units):
    prefix, service, sock = installed_units
    assert f"ExecStart={prefix}/sbin/muxd\n" in service.read_text()
    env = dict(os.environ, MANPATH=f"{prefix}/share/man:/usr/share/man")  # Documentation= is checked
    r = subprocess.run(["systemd-analyze", "verify", str(service), str(sock)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr


def test_service_exposure_score(installed_units):
    _, service, _ = installed_units
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(service)],
                       capture_output=True, text=True, timeout=60)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip(f"this systemd-analyze has no offline security analysis: {r.stderr.strip()}")
    m = re.search(r"Overall exposure level for muxd\.service: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_unit_contents():
    service = (ROOT / "systemd/muxd.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes", "StateDirectory=muxd",
                 "ConfigurationDirectory=muxd", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet=", "LimitNOFILE=65536"):
        assert re.search(rf"^{re.escape(line)}$", service, re.M), line
    sock = (ROOT / "systemd/muxd.socket").read_text()
    for line in ("ListenStream=127.0.0.1:3128", "ListenStream=[::1]:3128", "BindIPv6Only=ipv6-only"):
        assert re.search(rf"^{re.escape(line)}$", sock, re.M), line


# --------------------------------------------------------------------------
# man pages and the example configuration


def code_keys():
    """(section, key) of every configuration key the parser accepts."""
    src = (ROOT / "src/config.c").read_text()
    table = src[src.index("keys[] = {"):]
    table = table[: table.index("};")]
    keys = set(re.findall(r'\{\s*"(\w+)"\s*,\s*"(\w+)"\s*,\s*K_', table))
    body = src[src.index("static void route_key("):]
    body = body[: body.index("\n}\n")]
    keys |= {("route", k) for k in re.findall(r'strcmp\(name,\s*"(\w+)"\)\s*==\s*0', body)}
    assert len(keys) > 20 and ("route", "proxy") in keys
    return keys


def man_keys():
    keys, section = set(), None
    for line in (ROOT / "man/muxd.conf.5").read_text().splitlines():
        if line.startswith((".Ss", ".Sh")):
            m = re.match(r"\.Ss The \[(\w+)", line)
            section = m.group(1) if m else None
        elif section and (m := re.match(r"\.It Cm (\w+)", line)):
            keys.add((section, m.group(1)))
    return keys


def conf_keys():
    keys, section = set(), None
    for line in (ROOT / "conf/muxd.conf").read_text().splitlines():
        if m := re.match(r";?\[(\w+)", line):
            section = m.group(1)
        elif section and (m := re.match(r";?(\w+)\s*=", line)):
            keys.add((section, m.group(1)))
    return keys


def test_man_page_documents_every_key():
    code, man = code_keys(), man_keys()
    assert sorted(code - man) == [], "keys in src/config.c missing from man/muxd.conf.5"
    assert sorted(man - code) == [], "keys in man/muxd.conf.5 that src/config.c does not know"


def test_example_config_lists_every_key():
    code, conf = code_keys(), conf_keys()
    assert sorted(code - conf) == [], "keys in src/config.c missing from conf/muxd.conf"
    assert sorted(conf - code) == [], "keys in conf/muxd.conf that src/config.c does not know"
    r = subprocess.run([MUXD_BIN, "-t", "-c", str(ROOT / "conf/muxd.conf")], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr


def test_man_page_documents_every_option_and_command():
    main = (ROOT / "src/main.c").read_text()
    optstring = re.search(r'getopt(?:_long)?\(argc, argv, "([^"]+)"', main).group(1)
    page = (ROOT / "man/muxd.8").read_text()
    for opt in optstring.replace(":", ""):
        assert re.search(rf"^\.It Fl {opt}\b", page, re.M), f"-{opt} is not documented in muxd.8"
    for opt in re.findall(r'\{"([\w-]+)", (?:required|no)_argument', main):
        assert re.search(rf"\bFl \\-{opt}\b", page), f"--{opt} is not documented in muxd.8"
    for command in set(re.findall(r'strcmp\(argv\[optind\], "(\w+)"\)', main)) | {"env", "ca", "status"}:
        assert re.search(rf"^\.It Cm {command}\b", page, re.M), f"muxd {command} is not documented in muxd.8"
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS",
                    "EXAMPLES", "SEE ALSO"):
        assert f".Sh {section}\n" in page


XREF_NOISE = ("referenced manual not found", "outdated mandoc.db")


@pytest.mark.parametrize("page", ["man/muxd.8", "man/muxd.conf.5"])
def test_mandoc_lint(tmp_path, page):
    """`mandoc -T lint` reports nothing.  Its cross-reference check (Xr) needs
    a manual database that holds the referenced pages: Debian has none for
    /usr/share/man, so the page is linted against one built here from the two
    muxd pages and copies of the system pages they refer to."""
    need("mandoc")
    need("makewhatis")
    path = ROOT / page
    text = path.read_text()
    manpath = tmp_path / "man"
    for p in ("man/muxd.8", "man/muxd.conf.5"):
        sec = p.rsplit(".", 1)[1]
        (manpath / f"man{sec}").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / p, manpath / f"man{sec}")
    for name, sec in set(re.findall(r"^\.Xr (\S+) (\d)", text, re.M)):
        found = list(Path(f"/usr/share/man/man{sec}").glob(f"{name}.{sec}*"))
        if name.startswith("muxd"):
            continue
        assert found, f"{page} refers to {name}({sec}), which is not installed"
        (manpath / f"man{sec}").mkdir(parents=True, exist_ok=True)
        shutil.copy(found[0], manpath / f"man{sec}")
    subprocess.run(["makewhatis", str(manpath)], check=True, timeout=60)
    r = subprocess.run(["mandoc", "-T", "lint", "-W", "style", "-M", str(manpath), str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # and the default level (which also checks Xr against the host's base system) has
    # nothing to say beyond cross-references
    r = subprocess.run(["mandoc", "-T", "lint", str(path)], capture_output=True, text=True, timeout=60)
    other = [line for line in (r.stdout + r.stderr).splitlines()
             if line.strip() and not any(noise in line for noise in XREF_NOISE)]
    assert other == [], r.stdout + r.stderr
