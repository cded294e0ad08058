"""`muxd env` for every user of the host, `muxd trust`, and the client count
of the admin pages.

A system muxd keeps its state in a root-owned 0700 directory; a user's
`muxd env` must fetch that daemon's CA from /ca.pem, write the bundle into
the user's cache directory and never make a second CA.  `muxd trust` runs in
a scratch root (MUXD_TRUST_ROOT) or a private mount namespace, so the host's
trust store is never touched.
"""

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from support import LOCALHOST, MUXD_BIN, clean_env, closed_port, pattern_bytes, require_tool, wait_until

ONE_K = pattern_bytes(1024, seed=31)
SYSTEM_STORE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_MUXD_CRT = Path("/usr/local/share/ca-certificates/muxd.crt")
EXPORT_RE = re.compile(r"^export (\w+)='([^']*)'$", re.M)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")


def intercept_conf(pki, port):
    return {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}


@pytest.fixture
def user_home():
    """A fresh home directory of user nobody under /tmp (pytest's tmp_path
    is root's, mode 0700); removed afterwards."""
    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="muxd-env-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    yield home
    shutil.rmtree(top)


def as_nobody(home, argv, extra_env=None, timeout=60):
    """Run argv as nobody with a minimal environment and HOME=home."""
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SHELL": "/bin/sh",
           "LANG": "C"}
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra_env or {})
    cmd = ["runuser", "-u", "nobody", "--", "env", "-i"] + [f"{k}={v}" for k, v in env.items()] + list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")


def run_muxd(args, env=None, cwd=None, timeout=60):
    e = clean_env()
    e.update(env or {})
    return subprocess.run([MUXD_BIN] + list(args), capture_output=True, text=True, timeout=timeout, env=e,
                          cwd=cwd)


def exports(stdout):
    return dict(EXPORT_RE.findall(stdout))


def first_system_cert():
    text = SYSTEM_STORE.read_text()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return text[text.index("-----BEGIN CERTIFICATE-----"):end]


# --------------------------------------------------------------------------
# muxd env as a user who cannot read the daemon's state directory


@needs_root
def test_env_as_another_user_fetches_the_running_daemons_ca(muxd, nginx_tls, pki, user_home):
    (nginx_tls.root / "x").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    m.state_dir.chmod(0o700)  # root's, like /var/lib/muxd under DynamicUser
    listen = f"{LOCALHOST}:{m.port}"
    out = as_nobody(user_home, [MUXD_BIN, "env", "-l", listen, "-S", str(m.state_dir)])
    assert out.returncode == 0, out.stderr
    ex = exports(out.stdout)
    cache = user_home / ".cache" / "muxd"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert ex[name] == f"http://{listen}"
    assert ex["NODE_USE_ENV_PROXY"] == "1"
    for name in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert ex[name] == str(cache / "ca-bundle.pem"), f"{name}: {ex.get(name)!r}\n{out.stdout}"
    assert ex["NODE_EXTRA_CA_CERTS"] == str(cache / "ca.pem")
    for name in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"):
        assert os.path.isabs(ex[name])
    daemon_ca = (m.state_dir / "ca.pem").read_text()
    assert (cache / "ca.pem").read_text() == daemon_ca
    bundle = (cache / "ca-bundle.pem").read_text()
    assert daemon_ca.strip() in bundle, "the bundle lacks the daemon's CA"
    if SYSTEM_STORE.exists():
        assert first_system_cert() in bundle, "the bundle lacks the system trust store"
    assert (cache / "ca-bundle.pem").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert not (user_home / ".local").exists(), "muxd env made a second CA in the user's state directory"

    # curl, as that user with those exports, verifies an intercepted origin
    url = f"https://localhost:{nginx_tls.port}/x"
    script = f"""set -e
eval "$({MUXD_BIN} env -l {listen})"
unset no_proxy NO_PROXY   # the test origin is on loopback
curl -sS --fail --max-time 20 -o "$HOME/x.out" {url}
"""
    done = as_nobody(user_home, ["/bin/sh", "-c", script])
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert (user_home / "x.out").read_bytes() == ONE_K
    assert m.metrics().sum("muxd_tls_leaf_issued_total") == 1, "curl's TLS did not end at muxd"


@needs_root
def test_env_writes_the_bundle_into_xdg_cache_home(muxd, pki, user_home):
    m = muxd(intercept_conf(pki, 443))
    xdg = user_home / "xdg"
    out = as_nobody(user_home, [MUXD_BIN, "env", "-l", f"{LOCALHOST}:{m.port}"],
                    {"XDG_CACHE_HOME": str(xdg)})
    assert out.returncode == 0, out.stderr
    assert exports(out.stdout)["SSL_CERT_FILE"] == str(xdg / "muxd" / "ca-bundle.pem")
    assert (xdg / "muxd" / "ca.pem").read_text() == (m.state_dir / "ca.pem").read_text()
    # a relative XDG_CACHE_HOME is ignored (XDG base directory spec)
    out = as_nobody(user_home, [MUXD_BIN, "env", "-l", f"{LOCALHOST}:{m.port}"], {"XDG_CACHE_HOME": "rel"})
    assert out.returncode == 0, out.stderr
    assert exports(out.stdout)["SSL_CERT_FILE"] == str(user_home / ".cache" / "muxd" / "ca-bundle.pem")


@needs_root
def test_env_without_a_daemon_refuses_a_state_dir_that_is_not_the_users(tmp_path, user_home):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    out = as_nobody(user_home, [MUXD_BIN, "env", "-l", f"{LOCALHOST}:{closed_port()}", "-S", str(state)])
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert "no muxd answers" in out.stderr and "not yours" in out.stderr, out.stderr
    assert "start muxd" in out.stderr
    assert list(state.iterdir()) == [], "muxd env created a CA in someone else's state directory"
    assert not (user_home / ".local").exists() and not (user_home / ".cache").exists()


def test_env_without_a_daemon_creates_the_ca_in_the_users_own_state_dir(tmp_path):
    listen = f"{LOCALHOST}:{closed_port()}"
    out = run_muxd(["env", "-l", listen, "-S", "state"], cwd=tmp_path,
                   env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    ex = exports(out.stdout)
    state = tmp_path / "state"
    assert (state / "ca.pem").exists() and (state / "ca.key").exists()
    for name in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert ex[name] == str(state / "ca-bundle.pem"), "a relative -S must still print an absolute path"
    assert ex["NODE_EXTRA_CA_CERTS"] == str(state / "ca.pem")
    assert ex["NODE_USE_ENV_PROXY"] == "1"
    assert not (tmp_path / "cache").exists(), "no daemon: nothing to cache"
    # the same CA the next time: never regenerated
    ca = (state / "ca.pem").read_bytes()
    again = run_muxd(["env", "-l", listen, "-S", str(state)])
    assert again.returncode == 0 and exports(again.stdout) == ex
    assert (state / "ca.pem").read_bytes() == ca


def test_env_of_a_daemon_without_interception_exports_only_the_proxy(muxd, tmp_path):
    m = muxd({"intercept": {"enabled": "off"}})
    out = run_muxd(["env", "-l", f"{LOCALHOST}:{m.port}"], env={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert out.returncode == 0, out.stderr
    ex = exports(out.stdout)
    assert ex["https_proxy"] == f"http://{LOCALHOST}:{m.port}"
    assert "SSL_CERT_FILE" not in ex
    assert "does not intercept" in out.stderr


# --------------------------------------------------------------------------
# --shell


def env_for(tmp_path, *args, shell_env=None):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    if shell_env is not None:
        env["SHELL"] = shell_env
    return run_muxd(["env", "-l", f"{LOCALHOST}:{closed_port()}", "-S", str(tmp_path / "it's")] + list(args),
                    env=env)


def test_env_shell_syntax_sh_fish_csh(tmp_path):
    state = tmp_path / "it's"
    bundle = str(state / "ca-bundle.pem")
    sh = env_for(tmp_path, "--shell", "sh")
    assert sh.returncode == 0, sh.stderr
    # the quote in the path survives sh's quoting
    got = subprocess.run(["/bin/sh", "-c", sh.stdout + '\nprintf %s "$SSL_CERT_FILE|$NODE_USE_ENV_PROXY"'],
                         capture_output=True, text=True, timeout=10)
    assert got.stdout == bundle + "|1", got

    fish = env_for(tmp_path, "--shell=fish")
    assert fish.returncode == 0, fish.stderr
    fish_lines = fish.stdout.splitlines()
    assert "set -gx NODE_USE_ENV_PROXY '1';" in fish_lines
    assert "set -gx SSL_CERT_FILE '" + bundle.replace("'", "\\'") + "';" in fish_lines
    assert all(line.startswith("set -gx ") for line in fish_lines)

    csh = env_for(tmp_path, "--shell", "csh")
    assert csh.returncode == 0, csh.stderr
    csh_lines = csh.stdout.splitlines()
    assert "setenv https_proxy 'http://" in csh.stdout
    assert "setenv SSL_CERT_FILE '" + bundle.replace("'", "'\\''") + "';" in csh_lines
    assert all(line.startswith("setenv ") for line in csh_lines)
    for shell in ("fish", "tcsh"):
        if shutil.which(shell):
            out = fish.stdout if shell == "fish" else csh.stdout
            got = subprocess.run([shell, "-c", out + "\necho $SSL_CERT_FILE"], capture_output=True, text=True,
                                 timeout=10)
            assert got.stdout.strip() == bundle, got


def test_env_shell_defaults_from_SHELL_and_rejects_unknown(tmp_path):
    assert env_for(tmp_path, shell_env="/usr/bin/fish").stdout.startswith("set -gx ")
    assert env_for(tmp_path, shell_env="/bin/tcsh").stdout.startswith("setenv ")
    assert env_for(tmp_path, shell_env="/bin/bash").stdout.startswith("export ")
    assert env_for(tmp_path, shell_env="/opt/weird").stdout.startswith("export ")
    bad = env_for(tmp_path, "--shell", "powershell")
    assert bad.returncode == 2 and "sh, fish or csh" in bad.stderr, bad
    misplaced = run_muxd(["status", "--shell", "sh"])
    assert misplaced.returncode == 2 and "--shell" in misplaced.stderr


# --------------------------------------------------------------------------
# --apt


DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def apt_lines(listen):
    return f'Acquire::http::Proxy "http://{listen}/";\nAcquire::https::Proxy "http://{listen}/";\n'


def test_env_apt_prints_the_documented_snippet(muxd):
    m = muxd({})
    listen = f"{LOCALHOST}:{m.port}"
    # the running daemon is the second listen address: the snippet names the one that answers
    out = run_muxd(["env", "--apt", "-l", f"{LOCALHOST}:{closed_port()}", "-l", listen])
    assert out.returncode == 0, out.stderr
    assert out.stdout == apt_lines(listen)
    assert out.stderr == ""
    # docs/clients.md shows the command and exactly these lines (for the default address)
    doc = DOCS.read_text().split("\n## apt\n", 1)[1].split("\n## ", 1)[0]
    assert "muxd env --apt | sudo tee /etc/apt/apt.conf.d/80muxd\n" in doc
    assert "```\n" + apt_lines("127.0.0.1:3128") + "```\n" in doc


def test_env_apt_without_a_daemon_names_the_configured_address(tmp_path):
    listen = f"[::1]:{closed_port()}"
    out = run_muxd(["env", "--apt", "-l", listen, "-S", str(tmp_path / "state")])
    assert out.returncode == 0, out.stderr
    assert out.stdout == apt_lines(listen)
    assert "no muxd answers" in out.stderr
    assert not (tmp_path / "state").exists(), "--apt needs no CA"
    for args in (["env", "--apt", "--shell", "sh"], ["status", "--apt"], ["--apt"]):
        bad = run_muxd(args)
        assert bad.returncode == 2 and "--apt" in bad.stderr and bad.stdout == "", (args, bad)


# --------------------------------------------------------------------------
# muxd trust in a scratch root


@pytest.fixture
def scratch_root():
    """A trust root with the directories update-ca-certificates writes to,
    root's and visible to other users (under /tmp, not pytest's 0700 tree)."""
    top = Path(tempfile.mkdtemp(prefix="muxd-trust-"))
    top.chmod(0o755)
    root = top / "root"
    (root / "etc/ssl/certs").mkdir(parents=True)
    host_before = HOST_MUXD_CRT.exists()
    yield root
    shutil.rmtree(top)
    assert HOST_MUXD_CRT.exists() == host_before, "the host's trust store was touched"


def trust(m, root, *args, home=None, as_user=False, path=None):
    env = {"MUXD_TRUST_ROOT": str(root)}
    if path:
        env["PATH"] = path
    argv = [MUXD_BIN, "trust", "-l", f"{LOCALHOST}:{m.port}"] + list(args)
    if as_user:
        return as_nobody(home, argv, env)
    env["HOME"] = str(home)
    return run_muxd(argv[1:], env=env, timeout=120)


def bundle_of(root):
    return (root / "etc/ssl/certs/ca-certificates.crt").read_text()


@needs_root
def test_trust_installs_idempotently_and_removes(muxd, pki, scratch_root, tmp_path):
    m = muxd(intercept_conf(pki, 443))
    ca = (m.state_dir / "ca.pem").read_text()
    crt = scratch_root / "usr/local/share/ca-certificates/muxd.crt"
    home = tmp_path / "home"
    home.mkdir()

    out = trust(m, scratch_root, home=home)
    assert out.returncode == 0, out.stderr
    assert crt.read_text() == ca
    assert f"installed {crt}" in out.stdout and "ran update-ca-certificates" in out.stdout, out.stdout
    assert ca.strip() in bundle_of(scratch_root), "update-ca-certificates did not add the CA to the bundle"
    assert os.readlink(scratch_root / "etc/ssl/certs/muxd.pem") == str(crt)

    again = trust(m, scratch_root, home=home)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "ran " not in again.stdout, again.stdout

    gone = trust(m, scratch_root, "--remove", home=home)
    assert gone.returncode == 0, gone.stderr
    assert not crt.exists()
    assert f"removed {crt}" in gone.stdout and "--fresh" in gone.stdout, gone.stdout
    assert ca.strip() not in bundle_of(scratch_root)
    assert not os.path.lexists(scratch_root / "etc/ssl/certs/muxd.pem")

    twice = trust(m, scratch_root, "--remove", home=home)
    assert twice.returncode == 0 and "unchanged" in twice.stdout and "ran " not in twice.stdout, twice


@needs_root
def test_trust_refuses_without_privileges_and_needs_none_when_nothing_changes(muxd, pki, scratch_root, user_home):
    m = muxd(intercept_conf(pki, 443))
    crt = scratch_root / "usr/local/share/ca-certificates/muxd.crt"

    refused = trust(m, scratch_root, home=user_home, as_user=True)
    assert refused.returncode == 1, refused
    assert "refused" in refused.stderr and "sudo muxd trust" in refused.stderr, refused.stderr
    assert not crt.exists()

    assert trust(m, scratch_root, home=user_home).returncode == 0  # root installs it
    ok = trust(m, scratch_root, home=user_home, as_user=True)
    assert ok.returncode == 0, ok.stderr
    assert "unchanged" in ok.stdout

    refused = trust(m, scratch_root, "--remove", home=user_home, as_user=True)
    assert refused.returncode == 1 and "sudo muxd trust --remove" in refused.stderr, refused
    assert crt.exists()


NSS_NICK = "muxd local CA"


def certutil(db, *args, input=None):
    return subprocess.run(["certutil", "-d", f"sql:{db}"] + list(args), capture_output=True, text=True,
                          input=input, timeout=60)


def nss_trust_flags(db):
    """{nickname: trust flags} of `certutil -L` (the lines after its header)."""
    out = certutil(db, "-L")
    assert out.returncode == 0, out
    rows = {}
    for line in out.stdout.splitlines():
        line = line.rstrip()
        m = re.match(r"^(.*\S)\s+(\S*,\S*,\S*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def nss_cert_pem(db):
    out = certutil(db, "-L", "-n", NSS_NICK, "-a")
    return out.stdout.replace("\r\n", "\n") if out.returncode == 0 else None


def pem_body(pem):
    return "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))


@pytest.fixture
def nss_home(tmp_path):
    """A scratch HOME with an empty NSS database (~/.pki/nssdb), made by the
    real certutil as Chromium's first start would."""
    require_tool("certutil", "libnss3-tools")
    home = tmp_path / "home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    out = certutil(db, "-N", "--empty-password")
    assert out.returncode == 0, out
    return home, db


@needs_root
def test_trust_adds_the_ca_to_the_users_nss_database(muxd, pki, scratch_root, nss_home):
    """The real certutil: muxd trust adds the daemon's CA as a trusted SSL
    CA ("C,,", what Chromium needs), replaces an older muxd CA under the same
    nickname, and --remove takes it out; both idempotent."""
    home, db = nss_home
    m = muxd(intercept_conf(pki, 443))
    ca = (m.state_dir / "ca.pem").read_text()

    # a CA of an earlier muxd (another key) under muxd's nickname is replaced
    assert certutil(db, "-A", "-n", NSS_NICK, "-t", "C,,", input=pki.ca_cert.read_text()).returncode == 0
    out = trust(m, scratch_root, home=home)
    assert out.returncode == 0, out.stderr
    assert f'added "{NSS_NICK}" to {db}' in out.stdout, out.stdout
    assert nss_trust_flags(db) == {NSS_NICK: "C,,"}, certutil(db, "-L").stdout
    assert pem_body(nss_cert_pem(db)) == pem_body(ca), "the NSS database holds another certificate"

    again = trust(m, scratch_root, home=home)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2, again.stdout
    assert f"{db} already holds this CA: unchanged" in again.stdout
    assert nss_trust_flags(db) == {NSS_NICK: "C,,"}

    gone = trust(m, scratch_root, "--remove", home=home)
    assert gone.returncode == 0, gone.stderr
    assert f'removed "{NSS_NICK}" from {db}' in gone.stdout, gone.stdout
    assert nss_trust_flags(db) == {}
    assert nss_cert_pem(db) is None

    twice = trust(m, scratch_root, "--remove", home=home)
    assert twice.returncode == 0, twice.stderr
    assert f'no "{NSS_NICK}" in {db}: unchanged' in twice.stdout, twice.stdout


def test_trust_without_interception_says_there_is_no_ca(muxd, scratch_root, tmp_path):
    m = muxd({"intercept": {"enabled": "off"}})
    out = trust(m, scratch_root, home=tmp_path)
    assert out.returncode == 1 and "no CA to trust" in out.stderr, out
    assert not (scratch_root / "usr").exists()


@needs_root
def test_trust_in_a_mount_namespace_uses_the_real_paths(muxd, pki, tmp_path):
    """No override: the real /usr/local/share/ca-certificates and
    /etc/ssl/certs, bind-mounted over with copies in a private mount
    namespace (hooks disabled), so the host never sees the change."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("no mount namespaces here (unshare -m)")
    m = muxd(intercept_conf(pki, 443))
    ca = (m.state_dir / "ca.pem").read_text()
    local, certs, hooks = tmp_path / "local", tmp_path / "certs", tmp_path / "hooks"
    shutil.copytree("/usr/local/share/ca-certificates", local, symlinks=True)
    shutil.copytree("/etc/ssl/certs", certs, symlinks=True)
    hooks.mkdir()
    host_bundle = SYSTEM_STORE.read_bytes()
    script = f"""set -e
mount --bind {local} /usr/local/share/ca-certificates
mount --bind {certs} /etc/ssl/certs
if [ -d /etc/ca-certificates/update.d ]; then mount --bind {hooks} /etc/ca-certificates/update.d; fi
{MUXD_BIN} trust -l {LOCALHOST}:{m.port}
grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt
"""
    env = clean_env()
    env["HOME"] = str(tmp_path)
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out
    assert "installed /usr/local/share/ca-certificates/muxd.crt" in out.stdout
    assert (local / "muxd.crt").read_text() == ca
    assert ca.strip() in (certs / "ca-certificates.crt").read_text()
    assert not HOST_MUXD_CRT.exists() and SYSTEM_STORE.read_bytes() == host_bundle


# --------------------------------------------------------------------------
# the admin pages do not count the connection that asks


def test_status_does_not_count_its_own_query_as_a_client(muxd):
    m = muxd()
    out = run_muxd(["status", "-l", f"{LOCALHOST}:{m.port}"])
    assert out.returncode == 0, out.stderr
    assert ", 0 client connections," in out.stdout.splitlines()[0], out.stdout
    assert m.admin("/status.json").json()["clients"] == 0
    assert '0 client connections' in m.admin("/").text
    assert m.metrics().sum("muxd_client_connections") == 1  # the gauge counts every connection
    with socket.create_connection((LOCALHOST, m.port), timeout=10):
        wait_until(lambda: m.metrics().sum("muxd_client_connections") == 2, what="the idle client counted")
        assert m.admin("/status.json").json()["clients"] == 1
        out = run_muxd(["status", "-l", f"{LOCALHOST}:{m.port}"])
        assert ", 1 client connection," in out.stdout.splitlines()[0], out.stdout


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps"]


@needs_root
def test_chromium_trusts_the_ca_that_muxd_trust_added(muxd, nginx_tls, pki, scratch_root, nss_home, tmp_path):
    """Headless Chromium through muxd, with only the NSS database muxd trust
    filled (no --ignore-certificate-errors), loads an intercepted https page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed")
    home, db = nss_home
    (nginx_tls.root / "index.html").write_text("<html><body><p id=x>muxd-chromium-ok</p></body></html>\n")
    m = muxd(intercept_conf(pki, nginx_tls.port))
    assert trust(m, scratch_root, home=home).returncode == 0
    url = f"https://localhost:{nginx_tls.port}/index.html"
    env = clean_env()
    env["HOME"] = str(home)
    # <-loopback>: Chromium would otherwise go to a localhost origin directly
    argv = [chromium] + CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}",
                                          f"--proxy-server=http://{LOCALHOST}:{m.port}",
                                          "--proxy-bypass-list=<-loopback>", "--dump-dom", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert "muxd-chromium-ok" in out.stdout, f"stdout:\n{out.stdout[:2000]}\nstderr:\n{out.stderr[-3000:]}"
    assert m.metrics().sum("muxd_tls_leaf_issued_total") == 1, "Chromium's TLS did not end at muxd"
    wait_until(lambda: any("GET /index.html" in " ".join(f) for f in nginx_tls.log_lines()), timeout=5,
               what="the page in nginx's access log")

    # without muxd's CA in the database the same page is refused
    assert trust(m, scratch_root, "--remove", home=home).returncode == 0
    argv[len(CHROMIUM_FLAGS) + 1] = f"--user-data-dir={tmp_path / 'profile2'}"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert "muxd-chromium-ok" not in out.stdout, "Chromium loaded the page without trusting muxd's CA"
