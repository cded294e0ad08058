"""The Debian package (debian/, `make deb`): what it contains, what its
maintainer scripts do, that it installs into a scratch root with dpkg and
that its units verify there, that lintian finds no error, and that building
it leaves the source tree as it was.

The package is built once per run from the working tree (`make deb` with
DEBDIR in a temporary directory, DEB_BUILD_OPTIONS=nocheck: the unit tests
run elsewhere); MUXD_DEB=path/to/muxd_*.deb tests an already built one.
Nothing touches the host: dpkg runs with --root on a scratch directory and
its maintainer scripts see DPKG_ROOT (deb-systemd-helper acts inside it)."""

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import require_tool

ROOT = Path(__file__).resolve().parents[2]
# Building the package takes ~30 s on the 2-core test machine.
pytestmark = pytest.mark.slow


def version():
    m = re.search(r'#define MUXD_VERSION "([^"]+)"', (ROOT / "src/main.c").read_text())
    assert m, "src/main.c defines no MUXD_VERSION"
    return m.group(1)


def arch():
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def build_env():
    """The environment of a package build: none of the make variables of a
    `make check SANITIZE=1` that runs this test."""
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "SANITIZE", "BUILD"):
        env.pop(k, None)
    return env


def git_status():
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        return None
    r = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """Path of muxd_VERSION_ARCH.deb."""
    given = os.environ.get("MUXD_DEB")
    if given:
        return Path(given).resolve()
    for tool in ("dpkg-buildpackage", "dh"):
        require_tool(tool, "debhelper")
    out = tmp_path_factory.mktemp("deb")
    before = git_status()
    env = dict(build_env(), DEB_BUILD_OPTIONS="nocheck")
    r = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "deb", f"DEBDIR={out}"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    path = out / f"muxd_{version()}_{arch()}.deb"
    assert path.exists(), f"make deb made {sorted(p.name for p in out.iterdir())}"
    assert not (out / "work").exists(), "make deb left its work copy behind"
    assert git_status() == before, "make deb changed the source tree"
    return path


def deb_files(deb):
    """Regular files and symlinks in the package, as absolute paths."""
    r = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    files = []
    for line in r.stdout.splitlines():
        mode, name = line.split()[0], line.split(None, 5)[5].split(" -> ")[0]
        if not mode.startswith("d"):
            files.append(name.lstrip("."))
    return sorted(files)


@pytest.fixture(scope="module")
def control(deb, tmp_path_factory):
    """The package's control directory (dpkg-deb -e)."""
    d = tmp_path_factory.mktemp("control") / "DEBIAN"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(d)], check=True)
    return d


def test_file_list(deb):
    docs = sorted(f"/usr/share/doc/muxd/docs/{p.relative_to(ROOT / 'docs')}"
                  for p in (ROOT / "docs").rglob("*") if p.is_file())
    expected = sorted([
        "/etc/muxd/muxd.conf",
        "/lib/systemd/system/muxd.service",
        "/lib/systemd/system/muxd.socket",
        "/usr/bin/muxd",
        "/usr/share/doc/muxd/README.md",
        "/usr/share/doc/muxd/changelog",
        "/usr/share/doc/muxd/copyright",
        "/usr/share/man/man5/muxd.conf.5",
        "/usr/share/man/man8/muxd.8",
        *docs,
    ])
    # dh_compress gzips man pages and the larger docs
    assert sorted(f.removesuffix(".gz") for f in deb_files(deb)) == expected


def test_control_fields(deb, control):
    fields = (control / "control").read_text()
    assert re.search(r"^Package: muxd$", fields, re.M)
    assert re.search(rf"^Version: {re.escape(version())}$", fields, re.M), fields
    assert re.search(rf"^Architecture: {arch()}$", fields, re.M), fields
    deps = re.search(r"^Depends: (.*)$", fields, re.M).group(1)
    for lib in ("libevent", "libgnutls30", "libnghttp2", "libngtcp2", "libnghttp3", "libinih"):
        assert lib in deps, deps
    assert deb.name == f"muxd_{version()}_{arch()}.deb"
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"muxd ({version()})"), "debian/changelog and MUXD_VERSION differ"


def test_conffiles(control):
    assert (control / "conffiles").read_text().split() == ["/etc/muxd/muxd.conf"]


def test_maintainer_scripts(control):
    for name in ("preinst", "postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(control / name)], check=True)
    postinst = (control / "postinst").read_text()
    # the socket is enabled and started; the service only when the socket
    # starts it (enabling it too would have it bind 3128 itself at boot)
    assert "deb-systemd-helper enable 'muxd.socket'" in postinst
    assert re.search(r"deb-systemd-invoke \$_dh_action 'muxd.socket'", postinst)
    # (the installed test below sees that muxd.service is not enabled)
    assert not re.search(r"deb-systemd-invoke .*'muxd.service'", postinst)
    prerm = (control / "prerm").read_text()
    for unit in ("muxd.socket", "muxd.service"):
        assert re.search(rf"deb-systemd-invoke stop '?{re.escape(unit)}'?", prerm), (unit, prerm)
    postrm = (control / "postrm").read_text()
    for unit in ("muxd.socket", "muxd.service"):
        assert f"deb-systemd-helper purge '{unit}'" in postrm


def scratch_root(path):
    """An empty dpkg database under path, and a policy-rc.d that forbids
    starting anything (a second guard: the scripts skip starting units
    unless a systemd PID 1 runs)."""
    (path / "var/lib/dpkg/info").mkdir(parents=True)
    (path / "var/lib/dpkg/updates").mkdir()
    (path / "var/lib/dpkg/status").touch()
    (path / "usr/sbin").mkdir(parents=True)
    policy = path / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    return path


def dpkg(root, *args):
    cmd = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def installed(deb, tmp_path):
    """The package installed with dpkg into a scratch root (configured: its
    postinst ran, with DPKG_ROOT pointing there)."""
    if os.geteuid() != 0:
        pytest.skip("dpkg --root needs root to give the files their owners")
    if os.path.isdir("/run/systemd/system"):
        # the postinst's daemon-reload is not guarded by DPKG_ROOT
        pytest.skip("a systemd PID 1 runs here: not running maintainer scripts beside it")
    root = scratch_root(tmp_path / "root")
    dpkg(root, "--install", str(deb))
    return root


def test_install_enables_the_socket_and_purge_removes_everything(installed):
    root = installed
    status = dpkg(root, "--status", "muxd").stdout
    assert "Status: install ok installed" in status
    assert re.search(r"^Conffiles:\n /etc/muxd/muxd.conf [0-9a-f]{32}$", status, re.M), status
    wants = root / "etc/systemd/system/sockets.target.wants/muxd.socket"
    assert wants.is_symlink() and os.readlink(wants) == "/lib/systemd/system/muxd.socket"
    assert not list((root / "etc/systemd/system").rglob("muxd.service")), "muxd.service got enabled"
    assert (root / "usr/bin/muxd").is_file() and os.access(root / "usr/bin/muxd", os.X_OK)
    dpkg(root, "--purge", "muxd")
    left = [str(p.relative_to(root)) for p in root.rglob("*")
            if not p.is_dir() and not str(p.relative_to(root)).startswith("var/lib/dpkg/")]
    assert left == ["usr/sbin/policy-rc.d"], left


def test_installed_binary_runs_and_accepts_its_config(installed):
    root = installed
    r = subprocess.run([str(root / "usr/bin/muxd"), "-V"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == f"muxd {version()}", r.stdout + r.stderr
    r = subprocess.run([str(root / "usr/bin/muxd"), "-t", "-c", str(root / "etc/muxd/muxd.conf")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def analyze_verify(root):
    env = dict(os.environ, MANPATH=f"{root}/usr/share/man")  # Documentation=man:... is checked
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "muxd.service", "muxd.socket"],
                          capture_output=True, text=True, timeout=60, env=env)


def test_installed_units_verify(deb, tmp_path):
    """systemd-analyze verify --root= on the extracted package: ExecStart=
    must name the packaged binary inside the root. The host's targets and
    /bin/kill (ExecReload=) stand in for the rest of a Debian system."""
    require_tool("systemd-analyze", "systemd")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    service = (root / "lib/systemd/system/muxd.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/muxd$", service, re.M), service
    units = root / "lib/systemd/system"
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name, follow_symlinks=False)
    (root / "bin").mkdir()
    shutil.copy(shutil.which("kill"), root / "bin/kill")
    r = analyze_verify(root)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    # the check does look inside the root: without the binary it fails
    (root / "usr/bin/muxd").unlink()
    r = analyze_verify(root)
    assert r.returncode != 0 and "/usr/bin/muxd" in r.stdout + r.stderr, r.stdout + r.stderr


def test_lintian_reports_no_error(deb):
    require_tool("lintian", "lintian")
    r = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True, text=True,
                       timeout=300)
    tags = [line for line in (r.stdout + r.stderr).splitlines() if re.match(r"^[EW]: ", line)]
    errors = [t for t in tags if t.startswith("E: ")]
    assert not errors, "\n".join(tags)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docs_are_readable(deb, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    readme = root / "usr/share/doc/muxd/README.md.gz"
    text = gzip.decompress(readme.read_bytes()).decode() if readme.exists() else \
        (root / "usr/share/doc/muxd/README.md").read_text()
    assert text == (ROOT / "README.md").read_text()
