"""Real clients through muxd with the exact lines docs/clients.md gives:
each test evaluates `muxd env` in bash, runs the client's documented command
against an HTTPS origin (nginx with the test CA, which muxd's route trusts),
and checks that the body arrived and that the client's TLS ended at muxd
(a leaf was issued), i.e. the request went through muxd's pool.

The test origins are on loopback, which `muxd env` leaves in no_proxy on
purpose (muxd's own admin pages, local services); each script drops that
exemption first. test_loopback_stays_direct checks the exemption itself.

git over https is covered by
test_intercept.py::test_muxd_env_makes_git_clone_over_https_go_through_muxd,
curl and requests also by test_intercept.py::test_muxd_env_points_curl_and_requests_at_muxd.
Go programs are built offline from the standard library (test_go_program);
the docker daemon's drop-in from docs/clients.md is verified with systemd-analyze
and a real dockerd (docker.io, in install-deps) pulls from a registry: test_docker_*); node runs when it is
installed (its proxy support depends on the version)."""

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

from support import LOCALHOST, MUXD_BIN, clean_env, free_port, pattern_bytes, require_tool, wait_until

BODY = pattern_bytes(2048, seed=19)
PY = "/usr/bin/python3"


def intercept_conf(pki, port):
    return {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}


def env_cmd(m):
    return f"{MUXD_BIN} env -c {m.conf_path} -S {m.state_dir} -l {LOCALHOST}:{m.port}"


def run_client(m, script, cwd, keep_no_proxy=False, timeout=90):
    """bash: eval "$(muxd env ...)", then script ($1 is cwd)."""
    prologue = f'set -e\neval "$({env_cmd(m)})"\n'
    if not keep_no_proxy:
        prologue += "unset no_proxy NO_PROXY  # the test origin is on loopback\n"
    r = subprocess.run(["bash", "-c", prologue + script, "bash", str(cwd)], capture_output=True, text=True,
                       timeout=timeout, env=clean_env(), cwd=str(cwd))
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def leaf_issued(m):
    return m.metrics().sum("muxd_tls_leaf_issued_total")


@pytest.fixture
def site(muxd, nginx_tls, pki):
    """(muxd, nginx, https URL of a 2 KiB file)."""
    (nginx_tls.root / "file.bin").write_bytes(BODY)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    return m, nginx_tls, f"https://localhost:{nginx_tls.port}/file.bin"


def went_through_muxd(m, nginx, requests=1):
    wait_until(lambda: len(nginx.log_lines()) >= requests, timeout=5, what="nginx access log")
    assert leaf_issued(m) >= 1, "the client's TLS did not end at muxd"
    assert m.metrics().sum("muxd_requests_total") >= requests


def test_curl(site, tmp_path):
    m, nginx, url = site
    run_client(m, f'curl -sS --fail -o "$1/out" {url}\n', tmp_path)
    assert (tmp_path / "out").read_bytes() == BODY
    went_through_muxd(m, nginx)


def test_wget_with_ca_certificate(site, tmp_path):
    """wget (GnuTLS) reads the system store only, not SSL_CERT_FILE: it
    needs --ca-certificate (or `muxd trust`)."""
    require_tool("wget", "wget")
    m, nginx, url = site
    run_client(m, f'wget -q --ca-certificate="$SSL_CERT_FILE" -O "$1/out" {url}\n', tmp_path)
    assert (tmp_path / "out").read_bytes() == BODY
    went_through_muxd(m, nginx)


@pytest.mark.parametrize("client", ["urllib", "requests", "httpx"])
def test_python(site, tmp_path, client):
    m, nginx, url = site
    code = {
        "urllib": f'import urllib.request; body = urllib.request.urlopen("{url}", timeout=20).read()',
        "requests": f'import requests; body = requests.get("{url}", timeout=20).content',
        "httpx": f'import httpx; body = httpx.get("{url}", timeout=20).content',
    }[client]
    run_client(m, f"""{PY} - "$1/out" <<'EOF'
import sys
{code}
open(sys.argv[1], "wb").write(body)
EOF
""", tmp_path)
    assert (tmp_path / "out").read_bytes() == BODY
    went_through_muxd(m, nginx)


def tiny_wheel(name, version):
    """A minimal pure-python wheel (dist-info only), as bytes."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: muxd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p, text in {**files, f"{dist}/RECORD": record}.items():
            z.writestr(p, text)
    return buf.getvalue()


def test_pip_download(muxd, nginx_tls, pki, tmp_path):
    """pip (requests inside) takes REQUESTS_CA_BUNDLE from muxd env and the
    proxy from https_proxy: a simple index served over https."""
    m = muxd(intercept_conf(pki, nginx_tls.port))
    wheel = tiny_wheel("muxdtest", "1.0")
    name = "muxdtest-1.0-py3-none-any.whl"
    index = nginx_tls.root / "simple/muxdtest"
    index.mkdir(parents=True)
    (index / name).write_bytes(wheel)
    digest = hashlib.sha256(wheel).hexdigest()
    (index / "index.html").write_text(f'<html><body><a href="{name}#sha256={digest}">{name}</a></body></html>\n')
    url = f"https://localhost:{nginx_tls.port}/simple/"
    run_client(m, f'{PY} -m pip download -q --no-deps --disable-pip-version-check --no-cache-dir '
                  f'--index-url {url} -d "$1/dl" muxdtest\n', tmp_path)
    assert (tmp_path / "dl" / name).read_bytes() == wheel
    went_through_muxd(m, nginx_tls, requests=2)


JAVA_FETCH = """
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;

public class Fetch {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().proxy(java.net.ProxySelector.getDefault()).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0])).build();
        HttpResponse<Path> resp = client.send(req, HttpResponse.BodyHandlers.ofFile(Path.of(args[1])));
        if (resp.statusCode() != 200) throw new RuntimeException("status " + resp.statusCode());
    }
}
"""


def test_java_with_keystore_and_proxy_properties(site, tmp_path):
    """Java reads neither https_proxy nor SSL_CERT_FILE: keytool imports
    muxd's CA into a trust store, and -Dhttps.proxyHost/Port name muxd."""
    if not shutil.which("java") or not shutil.which("keytool"):
        pytest.skip("no java/keytool here (a JRE is not part of the test set)")
    m, nginx, url = site
    (tmp_path / "Fetch.java").write_text(JAVA_FETCH)
    run_client(m, f"""
curl -s --noproxy '*' http://{LOCALHOST}:{m.port}/ca.pem -o "$1/muxd-ca.pem"
if [ -f /etc/ssl/certs/java/cacerts ]; then cp /etc/ssl/certs/java/cacerts "$1/muxd-cacerts"; fi
keytool -importcert -noprompt -alias muxd -file "$1/muxd-ca.pem" -keystore "$1/muxd-cacerts" \\
    -storepass changeit >/dev/null
java -Djavax.net.ssl.trustStore="$1/muxd-cacerts" -Djavax.net.ssl.trustStorePassword=changeit \\
    -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={m.port} -Dhttp.nonProxyHosts= \\
    "$1/Fetch.java" {url} "$1/out"
""", tmp_path, timeout=120)
    assert (tmp_path / "out").read_bytes() == BODY
    went_through_muxd(m, nginx)


def node_major():
    if not shutil.which("node"):
        return None
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    return int(re.match(r"v(\d+)", out).group(1))


def test_node_fetch(site, tmp_path):
    """node's fetch: NODE_USE_ENV_PROXY=1 on node >= 24; on older ones the
    undici package's EnvHttpProxyAgent (when it is installed)."""
    major = node_major()
    if major is None:
        pytest.skip("node is not installed")
    m, nginx, url = site
    fetch = f'fetch("{url}").then(r => r.arrayBuffer()).then(b => ' \
            f'require("fs").writeFileSync(process.argv[1], Buffer.from(b)))'
    if major >= 24:
        script = f"NODE_USE_ENV_PROXY=1 node -e '{fetch}' \"$1/out\"\n"
    else:
        probe = subprocess.run(["node", "-e", "require.resolve('undici')"], capture_output=True, cwd=tmp_path)
        if probe.returncode != 0:
            pytest.skip(f"node {major} honours no proxy variable by itself and the undici package is not installed")
        setup = 'const {setGlobalDispatcher, EnvHttpProxyAgent} = require("undici"); ' \
                'setGlobalDispatcher(new EnvHttpProxyAgent()); '
        script = f"node -e '{setup}{fetch}' \"$1/out\"\n"
    run_client(m, script, tmp_path)
    assert (tmp_path / "out").read_bytes() == BODY
    went_through_muxd(m, nginx)


def test_npm_view(muxd, nginx_tls, pki, tmp_path):
    """npm takes its https-proxy from https_proxy; its trust comes from
    NODE_EXTRA_CA_CERTS unless an npmrc sets cafile (Debian's and
    nodesource's global npmrc do), hence --cafile with muxd env's bundle."""
    if not shutil.which("npm"):
        pytest.skip("npm is not installed")
    m = muxd(intercept_conf(pki, nginx_tls.port))
    (nginx_tls.root / "muxdtest").write_text(
        '{"name":"muxdtest","dist-tags":{"latest":"1.2.3"},'
        '"versions":{"1.2.3":{"name":"muxdtest","version":"1.2.3"}}}')
    registry = f"https://localhost:{nginx_tls.port}/"
    r = run_client(m, f'HOME="$1" npm view muxdtest version --cafile="$SSL_CERT_FILE" '
                      f'--registry={registry} --cache "$1/npm-cache" --prefer-online --no-update-notifier\n', tmp_path, timeout=120)
    assert r.stdout.strip() == "1.2.3", r.stdout + r.stderr
    went_through_muxd(m, nginx_tls)


def test_loopback_stays_direct(site, pki, tmp_path):
    """muxd env keeps loopback in no_proxy: a client asking a loopback origin
    goes there directly (muxd sees nothing) unless told --noproxy ''."""
    m, nginx, url = site
    run_client(m, f'curl -sS --fail --cacert {pki.ca_cert} -o "$1/direct" {url}\n', tmp_path, keep_no_proxy=True)
    assert (tmp_path / "direct").read_bytes() == BODY
    wait_until(lambda: len(nginx.log_lines()) >= 1, timeout=5, what="nginx access log")
    assert m.metrics().sum("muxd_requests_total") == 0
    assert leaf_issued(m) == 0


@pytest.fixture
def http_server(tmp_path):
    """`python3 -m http.server --protocol HTTP/1.1` (keep-alive) on loopback,
    as in the README's first request."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    port = free_port()
    p = subprocess.Popen([PY, "-m", "http.server", "--protocol", "HTTP/1.1", "--bind", LOCALHOST,
                          "--directory", str(root), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            return subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null",
                                   f"http://{LOCALHOST}:{port}/hello.txt"]).returncode == 0
        wait_until(up, timeout=10, what="http.server listening")
        yield port
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_readme_first_request_shows_reuse(muxd, http_server, tmp_path):
    """The README's first request: two fresh curl processes through muxd to
    a local http.server; the second reuses the first one's connection."""
    m = muxd({})
    url = f"http://{LOCALHOST}:{http_server}/hello.txt"
    r = run_client(m, f"curl -sS --noproxy '' {url}\ncurl -sS --noproxy '' {url}\n", tmp_path,
                   keep_no_proxy=True)
    assert r.stdout == "hello\nhello\n"
    assert m.metrics().sum("muxd_upstream_reuses_total") >= 1


def test_apt_with_proxy_snippet(muxd, nginx, tmp_path):
    """apt-get (update, download) with the apt.conf snippet docs/clients.md
    has written (`muxd env --apt`) and nothing else, in a scratch apt tree: a
    flat repository on an http:// origin, fetched through muxd (the host's
    own apt state is not used)."""
    for tool in ("apt-get", "dpkg-deb", "dpkg-scanpackages"):
        require_tool(tool, "dpkg-dev")
    if os.geteuid() != 0:
        pytest.skip("apt-get's scratch tree runs its methods as root here (APT::Sandbox::User)")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: muxd-apt-test\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: t <t@t.invalid>\nDescription: a test package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(nginx.root / "muxd-apt-test_1.0_all.deb")],
                   check=True, capture_output=True)
    packages = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=nginx.root, check=True,
                              capture_output=True).stdout
    (nginx.root / "Packages").write_bytes(packages)
    (nginx.root / "Release").write_text(
        "Origin: muxd-test\nLabel: muxd-test\nSuite: test\nCodename: test\n"
        "Date: Tue, 01 Dec 2026 10:00:00 UTC\nArchitectures: amd64 all\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")

    m = muxd({})
    apt = tmp_path / "apt"
    for d in ("state/lists/partial", "cache/archives/partial", "parts", "sources.d", "prefs.d", "dl"):
        (apt / d).mkdir(parents=True)
    (apt / "status").touch()
    (apt / "sources.list").write_text(f"deb [trusted=yes] http://{LOCALHOST}:{nginx.port}/ ./\n")
    snippet = subprocess.run([MUXD_BIN, "env", "--apt", "-l", f"{LOCALHOST}:{m.port}"], capture_output=True,
                             text=True, timeout=30, env=clean_env())
    assert snippet.returncode == 0 and "Acquire::http::Proxy" in snippet.stdout, snippet
    (apt / "80muxd").write_text(snippet.stdout)
    cmd = ["apt-get", "-q", "-c", str(apt / "80muxd"),
           "-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", f"Dir::Etc::SourceParts={apt / 'sources.d'}",
           "-o", f"Dir::Etc::Parts={apt / 'parts'}", "-o", f"Dir::Etc::Preferences={apt / 'prefs'}",
           "-o", f"Dir::Etc::PreferencesParts={apt / 'prefs.d'}", "-o", f"Dir::State={apt / 'state'}",
           "-o", f"Dir::State::status={apt / 'status'}", "-o", f"Dir::Cache={apt / 'cache'}",
           "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}  # no proxy variables: only the snippet
    for args in (["update"], ["download", "muxd-apt-test"]):
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, env=env, cwd=apt / "dl")
        assert r.returncode == 0 and "W:" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert (apt / "dl/muxd-apt-test_1.0_all.deb").read_bytes() == \
        (nginx.root / "muxd-apt-test_1.0_all.deb").read_bytes()
    # Release, Packages and the .deb went through muxd, on pooled connections
    assert m.metrics().sum("muxd_requests_total") >= 3
    assert m.metrics().sum("muxd_upstream_reuses_total") >= 1


# --------------------------------------------------------------------------
# Go programs: net/http's default transport (ProxyFromEnvironment) and
# crypto/x509 (SSL_CERT_FILE) with nothing but the exports of `muxd env`

GO_FETCH = """package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	client := &http.Client{Timeout: 20 * time.Second} // the default transport
	for i := 1; i+1 < len(os.Args); i += 2 {
		resp, err := client.Get(os.Args[i])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, os.Args[i], resp.Status, err)
			os.Exit(1)
		}
		if err := os.WriteFile(os.Args[i+1], body, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
"""

# Go never sends localhost or a loopback address to a proxy (whatever
# no_proxy says), but a name under .localhost goes through it, and muxd
# resolves that name to loopback (RFC 6761).
GO_HOST = "go.localhost"


@pytest.fixture(scope="session")
def go_fetch(tmp_path_factory):
    """The Go client above, built offline (stdlib only) in a scratch GOPATH
    and GOCACHE."""
    go = shutil.which("go")
    if not go:
        pytest.skip("go is not installed (golang-go, in scripts/install-deps)")
    d = tmp_path_factory.mktemp("go")
    (d / "src").mkdir()
    (d / "src" / "go.mod").write_text("module muxdtest/fetch\n\ngo 1.19\n")
    (d / "src" / "main.go").write_text(GO_FETCH)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d), "GOPATH": str(d / "gopath"),
           "GOCACHE": str(d / "cache"), "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GO111MODULE": "on",
           "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
    r = subprocess.run([go, "build", "-o", str(d / "fetch"), "."], cwd=d / "src", env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"go build failed:\n{r.stdout}\n{r.stderr}"
    return d / "fetch"


def leaf_for(pki, d, host):
    """A leaf for host signed by the test CA (muxd verifies the origin by
    that name)."""
    d.mkdir(exist_ok=True)
    key, cert, tmpl = d / f"{host}.key", d / f"{host}.pem", d / f"{host}.tmpl"
    subprocess.run(["certtool", "--generate-privkey", "--key-type=ecdsa", "--outfile", str(key)], check=True,
                   capture_output=True)
    tmpl.write_text(f'cn = "{host}"\nserial = 7\nexpiration_days = 30\ndns_name = "{host}"\n'
                    "tls_www_server\nsigning_key\nencryption_key\n")
    subprocess.run(["certtool", "--generate-certificate", "--load-privkey", str(key), "--load-ca-certificate",
                    str(pki.ca_cert), "--load-ca-privkey", str(pki.ca_key), "--template", str(tmpl),
                    "--outfile", str(cert)], check=True, capture_output=True)
    return cert, key


def test_go_program(go_fetch, muxd, nginx, tls_nginx_factory, pki, tmp_path):
    """A Go program (net/http defaults) run after `eval "$(muxd env)"` in sh
    fetches an https:// origin through interception (verifying muxd's leaf
    with SSL_CERT_FILE) and an http:// one, both through muxd's pool."""
    tls = tls_nginx_factory(cert=leaf_for(pki, tmp_path / "pki", GO_HOST))
    (tls.root / "file.bin").write_bytes(BODY)
    (nginx.root / "plain.bin").write_bytes(BODY[::-1])
    m = muxd(intercept_conf(pki, tls.port))
    script = f"""set -e
eval "$({env_cmd(m)})"
unset no_proxy NO_PROXY  # the test origins are on loopback (Go exempts .localhost only through no_proxy)
"$1" https://{GO_HOST}:{tls.port}/file.bin "$2/tls.out" http://{GO_HOST}:{nginx.port}/plain.bin "$2/plain.out"
"""
    r = subprocess.run(["/bin/sh", "-c", script, "sh", str(go_fetch), str(tmp_path)], capture_output=True,
                       text=True, timeout=90, env=clean_env(), cwd=str(tmp_path))
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert (tmp_path / "tls.out").read_bytes() == BODY
    assert (tmp_path / "plain.out").read_bytes() == BODY[::-1]
    wait_until(lambda: len(tls.log_lines()) >= 1 and len(nginx.log_lines()) >= 1, timeout=5,
               what="both nginx access logs")
    assert leaf_issued(m) == 1, "the Go program's TLS did not end at muxd"
    met = m.metrics()
    assert met.sum("muxd_requests_total", proto="h1") >= 2, "both requests went through muxd's pool"
    assert met.sum("muxd_upstream_connections_opened_total") == 2


# --------------------------------------------------------------------------
# the docker daemon: the systemd drop-in of docs/clients.md


def docker_drop_in():
    """The drop-in file docs/clients.md gives (the heredoc's body)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "clients.md").read_text()
    section = doc.split("\n## docker daemon\n", 1)[1].split("\n## ", 1)[0]
    body = re.search(r"<<'EOF'\n(.*?)\nEOF\n", section, re.S)
    assert body, "docs/clients.md: no drop-in heredoc in the docker section"
    return body.group(1) + "\n"


def drop_in_environment(text):
    """The variables of its Environment= lines (systemd's quoting: words in
    double quotes)."""
    env = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            for word in re.findall(r'"([^"]*)"|(\S+)', line[len("Environment="):]):
                k, _, v = (word[0] or word[1]).partition("=")
                env[k] = v
    return env


def test_docker_drop_in_is_a_valid_unit_with_the_values_of_muxd_env(tmp_path):
    """systemd-analyze verify accepts docker.service with the drop-in, and
    its proxy variables are the ones `muxd env` prints for the default
    address."""
    require_tool("systemd-analyze", "systemd")
    text = docker_drop_in()
    units = tmp_path / "units"
    (units / "docker.service.d").mkdir(parents=True)
    (units / "docker.service").write_text("[Unit]\nDescription=stand-in for docker.service\n\n"
                                          "[Service]\nType=simple\nExecStart=/bin/true\n")
    (units / "docker.service.d" / "muxd.conf").write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "docker.service")],
                       capture_output=True, text=True, timeout=60, env={**clean_env(), "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert r.returncode == 0 and "muxd.conf" not in r.stderr, r.stderr
    # the drop-in is read: a broken copy of it fails the same check
    (units / "docker.service.d" / "muxd.conf").write_text(text.replace("Environment=", "Environmnt="))
    bad = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "docker.service")],
                         capture_output=True, text=True, timeout=60,
                         env={**clean_env(), "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert "Environmnt" in bad.stderr, (bad.returncode, bad.stderr)

    env = drop_in_environment(text)
    out = subprocess.run([MUXD_BIN, "env", "-l", "127.0.0.1:3128", "-S", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 0, out.stderr
    exported = dict(re.findall(r"^export (\w+)='([^']*)'$", out.stdout, re.M))
    assert env == {k: exported[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}, (env, exported)


REGISTRY_HOST = "registry.localhost"  # not "localhost": Go would bypass the proxy


def registry_image(root):
    """A one-layer image as a registry serves it (schema 2 manifest, config,
    gzipped layer), as static files under root/v2/muxdtest/; returns the
    manifest's digest and the nginx directives it needs."""
    import gzip
    import json
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(BODY), 1700000000
        t.addfile(info, io.BytesIO(BODY))
    layer_tar = buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
                         "history": [{"created_by": "muxd tests"}]}).encode()
    blobs = root / "v2/muxdtest/blobs"
    blobs.mkdir(parents=True)
    digests = {}
    for name, data in (("config", config), ("layer", layer)):
        digests[name] = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digests[name]).write_bytes(data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": digests["config"]},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                    "digest": digests["layer"]}]}).encode()
    (root / "v2/muxdtest/manifests").mkdir()
    (root / "v2/muxdtest/manifests/latest").write_bytes(manifest)
    (root / "v2/index.html").write_text("{}")
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    (root / "v2/muxdtest/manifests" / digest).write_bytes(manifest)  # docker asks by digest after the tag
    extra = ("location /v2/muxdtest/manifests/ {\n"
             "    default_type application/vnd.docker.distribution.manifest.v2+json;\n"
             f"    add_header Docker-Content-Digest {digest};\n"
             "}\n"
             "location = /v2/ { default_type application/json; add_header Docker-Distribution-API-Version registry/2.0; }\n")
    return digest, extra


def test_docker_daemon_pulls_through_muxd_with_the_drop_in(muxd, tls_nginx_factory, pki, tmp_path):
    """A real dockerd, started with the drop-in's environment (muxd's port),
    pulls an image from an https registry through muxd's interception.
    Trust: the drop-in relies on `sudo muxd trust` (the system store); here,
    so that the host store stays untouched, dockerd gets muxd env's bundle
    as SSL_CERT_FILE (Go's crypto/x509 reads it instead of the system store)."""
    dockerd, docker = shutil.which("dockerd"), shutil.which("docker")
    if not dockerd or not docker:
        pytest.skip("no dockerd here (docker.io, in scripts/install-deps)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    www = tmp_path / "registry-www"
    digest, extra = registry_image(www)
    registry = tls_nginx_factory(cert=leaf_for(pki, tmp_path / "pki", REGISTRY_HOST), extra=extra)
    shutil.rmtree(registry.root)
    shutil.copytree(www, registry.root)
    m = muxd(intercept_conf(pki, registry.port))
    envout = subprocess.run(["sh", "-c", f'eval "$({env_cmd(m)})"; printf %s "$SSL_CERT_FILE"'],
                            capture_output=True, text=True, timeout=30, env=clean_env())
    assert envout.returncode == 0 and envout.stdout, envout

    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SSL_CERT_FILE": envout.stdout}
    for k, v in drop_in_environment(docker_drop_in()).items():
        env[k] = v.replace("127.0.0.1:3128", f"{LOCALHOST}:{m.port}")
    assert env["HTTPS_PROXY"] == m.proxy_url()
    del env["NO_PROXY"]  # the test registry is on loopback
    top = Path(tempfile.mkdtemp(prefix="muxd-dk-"))  # short: containerd's socket path is bounded
    sock = top / "docker.sock"
    # the trust key goes to /etc/docker/key.json unless told otherwise
    (top / "daemon.json").write_text('{"deprecated-key-path": "%s"}' % (top / "key.json"))
    argv = [dockerd, "--data-root", str(top / "data"), "--exec-root", str(top / "exec"), "-H", f"unix://{sock}",
            "--pidfile", str(top / "docker.pid"), "--config-file", str(top / "daemon.json"),
            "--iptables=false", "--ip6tables=false",
            "--bridge=none", "--ip-masq=false"]
    run_docker = Path("/run/docker")  # dockerd makes run_docker/plugins whatever its exec-root
    had_run_docker = run_docker.exists()
    log = open(tmp_path / "dockerd.log", "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            start_new_session=True)
    client_env = {"PATH": env["PATH"], "DOCKER_HOST": f"unix://{sock}", "HOME": str(top)}
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"dockerd exited:\n{(tmp_path / 'dockerd.log').read_text()[-3000:]}")
            return subprocess.run([docker, "version"], capture_output=True, env=client_env,
                                  timeout=10).returncode == 0
        wait_until(up, timeout=30, interval=0.2, what="dockerd answering")
        ref = f"{REGISTRY_HOST}:{registry.port}/muxdtest:latest"
        pull = subprocess.run([docker, "pull", ref], capture_output=True, text=True, env=client_env, timeout=120)
        assert pull.returncode == 0, f"{pull.stdout}\n{pull.stderr}\n{(tmp_path / 'dockerd.log').read_text()[-3000:]}"
        assert digest in pull.stdout, pull.stdout
        images = subprocess.run([docker, "images", "--digests", "--format", "{{.Repository}} {{.Digest}}"],
                                capture_output=True, text=True, env=client_env, timeout=30)
        assert f"{REGISTRY_HOST}:{registry.port}/muxdtest {digest}" in images.stdout, images.stdout
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", "-l", str(top)], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
        if not had_run_docker:
            shutil.rmtree(run_docker, ignore_errors=True)
    logged = [" ".join(f) for f in registry.log_lines()]
    assert any("/v2/muxdtest/manifests/latest" in line for line in logged), logged
    assert any(f"/v2/muxdtest/blobs/" in line for line in logged), logged
    assert leaf_issued(m) == 1, "dockerd's TLS did not end at muxd"
    assert m.metrics().sum("muxd_requests_total") >= 3
