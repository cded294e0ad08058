"""TLS interception: CONNECT to a port in ``[intercept] ports`` is answered
with 200 at once; a TLS ClientHello that follows is terminated by muxd with a
leaf from its local CA (state_dir/ca.pem), and the decrypted requests travel
through muxd's pool (HTTP/2 when the origin offers it).  Anything else after
the 200 (non-TLS bytes, or three seconds of silence) becomes a raw tunnel, and so
does a CONNECT to a host named in ``[intercept] bypass``.

Real clients do the talking: fresh curl processes, ``openssl s_client``,
bash with ``eval "$(muxd env ...)"``, python requests and python ssl.
"""

import hashlib
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time

import pytest

from support import (
    LOCALHOST,
    MUXD_BIN,
    HTTPReader,
    clean_env,
    closed_port,
    curl,
    echo_stream,
    open_tunnel,
    pattern_bytes,
    recv_all,
    require_tool,
    wait_until,
)

ONE_K = pattern_bytes(1024, seed=23)
OPENSSL = shutil.which("openssl") or "openssl"


def intercept_conf(pki, port, **sections):
    """Intercept CONNECTs to port; origins are verified against the test CA."""
    c = {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}
    for section, kv in sections.items():
        c.setdefault(section, {}).update(kv)
    return c


def local_ca(m):
    return m.state_dir / "ca.pem"


def curl_status(m, url, *args, timeout=20):
    """curl through muxd; returns (exit code, HTTP status, body, stderr)."""
    out = curl(m.port, url, "-w", "\n%{http_code}", *args, timeout=timeout)
    body, _, code = out.stdout.rpartition(b"\n")
    return out.returncode, int(code or b"0"), body, out.stderr.decode(errors="replace")


def leaf_issued(m):
    return m.metrics().sum("muxd_tls_leaf_issued_total")


def intercepted_tls(m, authority, ctx, server_hostname="localhost", session=None):
    """CONNECT authority through muxd, then a TLS client handshake inside the
    tunnel (ctx decides what is trusted).  Returns the SSLSocket."""
    resp, reader = open_tunnel(m.port, authority)
    assert resp.status == 200, resp
    assert not reader.buf, f"bytes after the CONNECT 200: {bytes(reader.buf)!r}"
    try:
        return ctx.wrap_socket(reader.sock, server_hostname=server_hostname, session=session)
    except BaseException:
        reader.sock.close()
        raise


def tls_get(tls, path, host, keep_alive=False):
    """Send GET path with the given Host header on a TLS socket; read one
    response."""
    conn = "keep-alive" if keep_alive else "close"
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode())
    return HTTPReader(tls).read_response()


def sha256_fingerprint(pem_path):
    """'AB:CD:...' of a PEM certificate, computed in python."""
    der = ssl.PEM_cert_to_DER_cert(pem_path.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --------------------------------------------------------------------------
# 1. many short-lived clients share one upstream HTTP/2 connection


def test_thirty_fresh_curls_share_h2_upstream_and_one_leaf(muxd, tls_nginx_factory, pki):
    ng = tls_nginx_factory(http2=True)
    (ng.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, ng.port))
    url = f"https://localhost:{ng.port}/1k"
    for i in range(30):
        rc, status, body, err = curl_status(m, url, "--cacert", str(local_ca(m)))
        assert rc == 0, f"curl {i}: exit {rc}: {err}"
        assert status == 200, f"curl {i}: HTTP {status}"
        assert body == ONE_K, f"curl {i}: body differs ({len(body)} bytes)"
    wait_until(lambda: len(ng.log_lines()) >= 30, timeout=5, what="nginx access log")
    assert len(ng.log_lines()) == 30
    protocols = set(ng.protocols())
    assert protocols == {"HTTP/2.0"}, f"nginx saw {protocols}, wanted only HTTP/2.0"
    conns = ng.connections()
    assert len(conns) <= 2, f"nginx saw {len(conns)} connections for 30 intercepted curls"
    assert leaf_issued(m) == 1, "the leaf for localhost was issued more than once (or never)"


# --------------------------------------------------------------------------
# 2. the leaf: verifies against the local CA, names the right host


def s_client(m, connect, *args):
    """openssl s_client through muxd's CONNECT; returns the CompletedProcess
    (text)."""
    require_tool(OPENSSL, "openssl")
    cmd = [OPENSSL, "s_client", "-proxy", f"{LOCALHOST}:{m.port}", "-connect", connect,
           "-CAfile", str(local_ca(m)), "-verify_return_error", *args]
    return subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20, env=clean_env())


def san_of(s_client_stdout):
    """subjectAltName of the server certificate that s_client printed."""
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", s_client_stdout, re.S)
    assert pem, f"no certificate in s_client output:\n{s_client_stdout}"
    out = subprocess.run([OPENSSL, "x509", "-noout", "-ext", "subjectAltName", "-issuer"],
                         input=pem.group(0), capture_output=True, text=True, timeout=10, check=True)
    return out.stdout


def test_openssl_verifies_leaf_with_dns_san(muxd, nginx_tls, pki):
    m = muxd(intercept_conf(pki, nginx_tls.port))
    out = s_client(m, f"localhost:{nginx_tls.port}", "-servername", "localhost", "-verify_hostname", "localhost")
    assert "Verify return code: 0 (ok)" in out.stdout, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    info = san_of(out.stdout)
    assert "DNS:localhost" in info, info
    assert "muxd test CA" not in info, f"the origin's certificate came through, not muxd's leaf:\n{info}"
    assert leaf_issued(m) == 1


def test_openssl_verifies_leaf_with_ip_san_without_sni(muxd, nginx_tls, pki):
    m = muxd(intercept_conf(pki, nginx_tls.port))
    out = s_client(m, f"{LOCALHOST}:{nginx_tls.port}", "-noservername", "-verify_ip", LOCALHOST)
    assert "Verify return code: 0 (ok)" in out.stdout, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    info = san_of(out.stdout)
    assert "IP Address:127.0.0.1" in info, info
    assert "muxd test CA" not in info, f"the origin's certificate came through, not muxd's leaf:\n{info}"


# --------------------------------------------------------------------------
# 3. muxd env, the CA files, persistence, refusing an unsafe key


def test_muxd_env_points_curl_and_requests_at_muxd(muxd, nginx_tls, pki):
    (nginx_tls.root / "x").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    env_cmd = [MUXD_BIN, "env", "-c", str(m.conf_path), "-S", str(m.state_dir), "-l", f"{LOCALHOST}:{m.port}"]
    env = clean_env()
    env["XDG_CACHE_HOME"] = str(m.dir / "cache")  # where muxd env writes the running daemon's CA
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=10, env=env)
    assert out.returncode == 0, out.stderr
    exports = dict(re.findall(r"^export (\w+)='([^']*)'$", out.stdout, re.M))
    proxy = f"http://{LOCALHOST}:{m.port}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert exports.get(name) == proxy, f"{name}: {exports.get(name)!r}\n{out.stdout}"
    for name in ("no_proxy", "NO_PROXY"):
        assert exports.get(name) == "localhost,127.0.0.1,::1", f"{name}: {exports.get(name)!r}"
    bundle = m.dir / "cache" / "muxd" / "ca-bundle.pem"
    for name in ("SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert exports.get(name) == str(bundle), f"{name}: {exports.get(name)!r}"
    assert exports.get("NODE_EXTRA_CA_CERTS") == str(m.dir / "cache" / "muxd" / "ca.pem")
    assert (m.dir / "cache" / "muxd" / "ca.pem").read_text() == local_ca(m).read_text()
    assert local_ca(m).read_text().strip() in bundle.read_text(), "ca-bundle.pem does not contain the local CA"

    url = f"https://localhost:{nginx_tls.port}/x"
    script = f"""
set -e
eval "$({' '.join(env_cmd)})"
# muxd env exempts loopback from the proxy (no_proxy), but the test origin
# itself is on loopback: drop the exemption so clients go through muxd.
unset no_proxy NO_PROXY
curl -sS --fail --max-time 20 -o "$1/curl.out" {url}
/usr/bin/python3 - "$1/py.out" <<'EOF'
import sys, requests
r = requests.get("{url}", timeout=20)
r.raise_for_status()
open(sys.argv[1], "wb").write(r.content)
EOF
"""
    done = subprocess.run(["bash", "-c", script, "bash", str(m.dir)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert (m.dir / "curl.out").read_bytes() == ONE_K
    assert (m.dir / "py.out").read_bytes() == ONE_K
    # both went through muxd's interception, not straight to nginx
    wait_until(lambda: len(nginx_tls.log_lines()) >= 2, timeout=5, what="nginx access log")
    assert len(nginx_tls.log_lines()) == 2
    assert leaf_issued(m) == 1
    assert m.metrics().sum("muxd_requests_total") >= 2


def test_muxd_env_makes_git_clone_over_https_go_through_muxd(muxd, nginx_tls, pki, tmp_path):
    """git over https (the dumb HTTP protocol, served by nginx from a bare
    repository) verifies muxd's leaf through GIT_SSL_CAINFO from muxd env."""
    src = tmp_path / "src"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "hello.txt").write_text("through muxd\n")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "hello.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
    bare = nginx_tls.root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)

    m = muxd(intercept_conf(pki, nginx_tls.port))
    env_cmd = [MUXD_BIN, "env", "-c", str(m.conf_path), "-S", str(m.state_dir), "-l", f"{LOCALHOST}:{m.port}"]
    script = f"""
set -e
eval "$({' '.join(env_cmd)})"
unset no_proxy NO_PROXY   # the test origin is on loopback (see the test above)
git clone -q https://localhost:{nginx_tls.port}/repo.git "$1/clone"
"""
    env = clean_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    done = subprocess.run(["bash", "-c", script, "bash", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert (tmp_path / "clone" / "hello.txt").read_text() == "through muxd\n"
    assert leaf_issued(m) == 1  # git's TLS ended at muxd, with muxd's leaf
    assert m.metrics().sum("muxd_requests_total") >= 2


def muxd_ca(m):
    out = subprocess.run([MUXD_BIN, "ca", "-c", str(m.conf_path), "-S", str(m.state_dir)],
                         capture_output=True, text=True, timeout=10, env=clean_env())
    assert out.returncode == 0, out.stderr
    fp = re.search(r"SHA256:((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", out.stdout)
    assert fp, f"no SHA256:AB:CD:... fingerprint in {out.stdout!r}"
    assert str(local_ca(m)) in out.stdout, f"muxd ca does not print the CA path: {out.stdout!r}"
    return fp.group(1)


def test_ca_files_modes_and_persistence(muxd, pki):
    m = muxd(intercept_conf(pki, 443))
    key, cert = m.state_dir / "ca.key", local_ca(m)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600, oct(key.stat().st_mode)
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644, oct(cert.stat().st_mode)
    before = muxd_ca(m)
    assert before == sha256_fingerprint(cert), "muxd ca prints a fingerprint that is not ca.pem's"
    pem, key_bytes = cert.read_bytes(), key.read_bytes()
    assert m.stop() == 0
    m.start()
    assert muxd_ca(m) == before, "the CA changed across a restart"
    assert cert.read_bytes() == pem and key.read_bytes() == key_bytes


def test_refuses_to_start_with_readable_ca_key(muxd, pki):
    m = muxd(intercept_conf(pki, 443))
    assert m.stop() == 0
    key = m.state_dir / "ca.key"
    os.chmod(key, 0o644)
    cmd = [MUXD_BIN, "-c", str(m.conf_path), "-S", str(m.state_dir), "-l", f"{LOCALHOST}:0"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"muxd started with a 0644 CA key:\n{err}")
    assert proc.returncode != 0, f"muxd exited 0 with a 0644 CA key:\n{err}"
    text = out + err
    assert "ca.key" in text, f"the message does not name the key file: {text!r}"
    assert re.search(r"\b0?644\b", text), f"the message does not give the mode: {text!r}"
    assert "listening on" not in text


# --------------------------------------------------------------------------
# 4. what is not intercepted, and upstream failures


@pytest.mark.parametrize("bypass, host", [
    ("localhost", "localhost"),
    ("localhost:{port}", "localhost"),
    ("127.0.0.1", LOCALHOST),
    ("10.0.0.0/8 127.0.0.0/8", LOCALHOST),
])
def test_bypassed_host_is_tunneled(muxd, nginx_tls, pki, bypass, host):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    port = nginx_tls.port
    m = muxd(intercept_conf(pki, port, intercept={"bypass": bypass.format(port=port)},
                            muxd={"connect_ports": port}))
    url = f"https://{host}:{port}/1k"
    rc, status, body, err = curl_status(m, url, "--cacert", str(pki.ca_cert))
    assert (rc, status) == (0, 200), f"with the origin's CA: exit {rc}, HTTP {status}: {err}"
    assert body == ONE_K
    rc, status, _, err = curl_status(m, url, "--cacert", str(local_ca(m)))
    assert rc == 60, f"with muxd's CA curl should fail to verify the origin's own certificate: exit {rc}: {err}"
    assert leaf_issued(m) == 0
    assert m.metrics().sum("muxd_requests_total", proto="tunnel") >= 2


def test_non_tls_bytes_are_tunneled(muxd, stream_server, pki):
    srv = stream_server(echo_stream)
    m = muxd(intercept_conf(pki, srv.port))
    resp, reader = open_tunnel(m.port, srv.authority)
    with reader.sock as s:
        assert resp.status == 200, resp
        start = time.monotonic()
        s.sendall(b"PING plain text, not a ClientHello\r\n")
        echoed = reader.read_until(b"\r\n")
        waited = time.monotonic() - start
        s.sendall(b"second line\r\n")
        assert reader.read_until(b"\r\n") == b"second line\r\n"
        s.shutdown(socket.SHUT_WR)
        assert bytes(reader.buf) + recv_all(s) == b"", "bytes after the echo"
    assert echoed == b"PING plain text, not a ClientHello\r\n"
    assert waited < 0.9, f"muxd waited {waited:.2f}s (the peek timeout?) although bytes had arrived"
    assert srv.connections == 1
    assert leaf_issued(m) == 0


def test_non_tls_bytes_then_eof_are_tunneled(muxd, stream_server, pki):
    """A client that writes its whole request and half-closes at once (like
    `printf ... | nc`): the bytes and the EOF may arrive together while muxd
    is still peeking.  The tunnel must still carry them, as a plain CONNECT
    tunnel does."""
    srv = stream_server(echo_stream)
    m = muxd(intercept_conf(pki, srv.port))
    resp, reader = open_tunnel(m.port, srv.authority)
    with reader.sock as s:
        assert resp.status == 200, resp
        s.sendall(b"PING plain text, not a ClientHello\r\n")
        s.shutdown(socket.SHUT_WR)
        echoed = bytes(reader.buf) + recv_all(s)
    assert echoed == b"PING plain text, not a ClientHello\r\n", \
        f"got {echoed!r}; the origin saw {srv.connections} connection(s)"
    assert srv.connections == 1


def test_server_speaks_first_is_tunneled_after_silence(muxd, stream_server, pki):
    def banner_then_echo(sock):
        sock.sendall(b"220 server speaks first\r\n")
        echo_stream(sock)

    srv = stream_server(banner_then_echo)
    m = muxd(intercept_conf(pki, srv.port))
    resp, reader = open_tunnel(m.port, srv.authority)
    with reader.sock as s:
        assert resp.status == 200, resp
        start = time.monotonic()
        banner = reader.read_until(b"\r\n")
        waited = time.monotonic() - start
        assert banner == b"220 server speaks first\r\n"
        s.sendall(b"QUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        rest = bytes(reader.buf) + recv_all(s)
    assert rest == b"QUIT\r\n"
    assert 2.5 <= waited <= 10, f"the banner arrived after {waited:.2f}s (expected ~3 s of peeking)"
    assert leaf_issued(m) == 0


def test_bad_origin_certificate_is_502_inside_tls(muxd, nginx_selfsigned, pki):
    (nginx_selfsigned.root / "1k").write_bytes(ONE_K)
    port = nginx_selfsigned.port
    m = muxd(intercept_conf(pki, port))
    rc, status, body, err = curl_status(m, f"https://localhost:{port}/1k", "--cacert", str(local_ca(m)))
    assert rc == 0, f"the client's TLS with muxd should succeed: exit {rc}: {err}"
    assert status == 502, f"HTTP {status}: {body!r}"
    text = body.decode(errors="replace")
    assert f"localhost:{port}" in text, f"the body does not name the origin: {text!r}"
    assert "certificate" in text.lower(), f"the body does not give the reason: {text!r}"
    assert not nginx_selfsigned.log_lines(), "a request reached the untrusted origin"


def test_refused_origin_is_502_inside_tls(muxd, pki):
    port = closed_port()
    m = muxd(intercept_conf(pki, port))
    rc, status, body, err = curl_status(m, f"https://localhost:{port}/", "--cacert", str(local_ca(m)))
    assert rc == 0, f"the client's TLS with muxd should succeed: exit {rc}: {err}"
    assert status == 502, f"HTTP {status}: {body!r}"
    assert f"localhost:{port}" in body.decode(errors="replace"), body


@pytest.mark.parametrize("scheme", ["http", "https", "socks5"])
def test_dead_parent_is_502_inside_tls(muxd, pki, scheme):
    """CONNECT on an intercepted port whose route goes through a parent that
    is down: the client's TLS with muxd succeeds, and its first request gets
    the 502 naming the parent and the reason (curl and python requests, both
    pointed at muxd by https_proxy and trusting its CA)."""
    port, dead = closed_port(), closed_port()
    m = muxd(intercept_conf(pki, port, **{"route *": {"proxy": f"{scheme}://{LOCALHOST}:{dead}",
                                                    "proxy_ca_file": pki.ca_cert}}))
    url = f"https://localhost:{port}/x"
    env = dict(clean_env(), https_proxy=m.proxy_url(), REQUESTS_CA_BUNDLE=str(local_ca(m)))
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(local_ca(m)), "-w", "\n%{http_code}", url],
                         capture_output=True, env=env, timeout=30)
    body, _, code = out.stdout.rpartition(b"\n")
    assert out.returncode == 0, f"curl: exit {out.returncode}: {out.stderr!r}"
    script = f"import requests; r = requests.get({url!r}, timeout=20); print(r.status_code); print(r.text)"
    py = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    assert py.returncode == 0, f"python requests failed: {py.stderr}"
    py_code, _, py_body = py.stdout.partition("\n")
    for who, status, text in (("curl", int(code), body.decode(errors="replace")), ("requests", int(py_code), py_body)):
        assert status == 502, f"{who}: HTTP {status}: {text!r}"
        assert f"proxy {LOCALHOST}:{dead}" in text, f"{who}: the body does not name the parent: {text!r}"
        assert "connection refused" in text, f"{who}: the body does not give the reason: {text!r}"
        assert f"localhost:{port}" in text, f"{who}: the body does not name the origin: {text!r}"
    assert leaf_issued(m) == 1


# --------------------------------------------------------------------------
# 5. /ca.pem, Host checks, session resumption


def test_admin_serves_ca_pem(muxd, pki):
    m = muxd(intercept_conf(pki, 443))
    resp = m.admin("/ca.pem")
    assert resp.status == 200, resp
    assert resp.body == local_ca(m).read_bytes()


def test_host_must_name_the_connect_target(muxd, nginx_tls, pki):
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))
    authority = f"localhost:{nginx_tls.port}"
    with intercepted_tls(m, authority, ctx) as tls:
        resp = tls_get(tls, "/1k", authority)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    with intercepted_tls(m, authority, ctx) as tls:
        resp = tls_get(tls, "/1k", "other.example")
    assert resp.status == 400, resp
    with intercepted_tls(m, authority, ctx) as tls:
        resp = tls_get(tls, "/1k", f"localhost:{nginx_tls.port + 1}")
    assert resp.status == 400, resp
    assert len(nginx_tls.log_lines()) == 1, "a request with a wrong Host reached the origin"


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_client_tls_session_resumption(muxd, nginx_tls, pki, version):
    """A client that reconnects with muxd's session ticket (TLS 1.3 PSK, or
    the TLS 1.2 SessionTicket extension) resumes: no certificate is sent,
    and the leaf is not issued again."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    authority = f"localhost:{nginx_tls.port}"
    with intercepted_tls(m, authority, ctx) as first:
        assert first.version() == version.replace("_", ".")
        # a full exchange, so the TLS 1.3 ticket has arrived before we look
        resp = tls_get(first, "/1k", authority)
        assert resp.status == 200, resp
        session = first.session
        assert not first.session_reused
    assert session is not None and session.has_ticket, "muxd sent no session ticket"
    for i in range(2):
        with intercepted_tls(m, authority, ctx, session=session) as again:
            assert again.session_reused, f"handshake {i + 2} was a full one"
            assert again.version() == version.replace("_", ".")
            resp = tls_get(again, "/1k", authority)
            assert resp.status == 200, resp
            assert resp.body == ONE_K
            session = again.session
    assert leaf_issued(m) == 1, "the leaf was issued again for a resuming client"


def client_connections(m):
    """Open client connections, not counting the /metrics request itself."""
    return m.metrics().sum("muxd_client_connections") - 1


def test_closed_intercepted_clients_are_released(muxd, nginx_tls, pki):
    """When a client ends its intercepted session (curl: close_notify then
    close; python: close on a keep-alive session), muxd closes its side too:
    no client connection is left open, and SIGTERM finds nothing to wait for."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port), args=["-v"])
    authority = f"localhost:{nginx_tls.port}"
    for _ in range(3):
        rc, status, _, err = curl_status(m, f"https://{authority}/1k", "--cacert", str(local_ca(m)))
        assert (rc, status) == (0, 200), err
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))
    with intercepted_tls(m, authority, ctx) as tls:
        assert tls_get(tls, "/1k", authority, keep_alive=True).status == 200
    try:
        wait_until(lambda: client_connections(m) == 0, timeout=2, what="muxd to close finished client sessions")
    except AssertionError:
        pytest.fail(f"{client_connections(m):.0f} client connection(s) still open in muxd 2 s after "
                    "4 intercepted clients (3 curl, 1 python ssl) closed their sessions")
    start = time.monotonic()
    assert m.stop() == 0
    took = time.monotonic() - start
    assert took < 2, f"muxd took {took:.1f}s to stop with no clients"


# --------------------------------------------------------------------------
# 6. the SNI against the CONNECT host: the leaf names what was CONNECTed to


NAME_ONLY_TEMPLATE = """\
cn = "{name}"
organization = "muxd tests"
serial = {serial}
expiration_days = 30
dns_name = "{name}"
tls_www_server
signing_key
encryption_key
"""


def name_only_cert(pki, d, name, serial):
    """A leaf signed by the test CA for the DNS name alone (no IP SAN):
    (cert, key) paths in d."""
    d.mkdir(parents=True, exist_ok=True)
    key, cert, tmpl = d / f"{name}.key", d / f"{name}.pem", d / f"{name}.tmpl"
    tmpl.write_text(NAME_ONLY_TEMPLATE.format(name=name, serial=serial))
    subprocess.run(["certtool", "--generate-privkey", "--key-type=ecdsa", "--outfile", str(key)],
                   check=True, capture_output=True)
    subprocess.run(["certtool", "--generate-certificate", "--load-privkey", str(key), "--load-ca-certificate",
                    str(pki.ca_cert), "--load-ca-privkey", str(pki.ca_key), "--template", str(tmpl),
                    "--outfile", str(cert)], check=True, capture_output=True)
    return cert, key


def san_names(tls):
    return sorted(v for _, v in tls.getpeercert()["subjectAltName"])


def test_sni_other_than_connect_host_gets_leaf_for_connect_host(muxd, nginx_tls, pki):
    """CONNECT localhost:PORT, then a ClientHello for bank.example: muxd does
    not vouch for bank.example; the leaf names localhost, and the requests
    go to localhost."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))
    ctx.check_hostname = False  # look at the name instead of refusing it
    authority = f"localhost:{nginx_tls.port}"
    with intercepted_tls(m, authority, ctx, server_hostname="bank.example") as tls:
        assert san_names(tls) == ["localhost"], tls.getpeercert()
        resp = tls_get(tls, "/1k", authority)
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    # a client that checks the name it sent refuses the leaf
    strict = ssl.create_default_context(cafile=str(local_ca(m)))
    with pytest.raises(ssl.SSLCertVerificationError):
        intercepted_tls(m, authority, strict, server_hostname="bank.example").close()
    wait_until(lambda: "SNI 'bank.example'" in m.log(), timeout=5, what="the SNI mismatch in the log")
    assert "the certificate and the origin are localhost" in m.log(), m.log()


def test_sni_name_for_connect_address_verifies_name_routes_by_address(muxd, tls_nginx_factory, pki, tmp_path):
    """CONNECT 127.0.0.1:PORT with SNI bank.example (a client that resolved
    the name itself): the leaf names bank.example, muxd verifies the origin
    for bank.example (its certificate has no IP address) and routes by the
    address (the route for bank.example would send it to a dead parent)."""
    ng = tls_nginx_factory(cert=name_only_cert(pki, tmp_path / "bank", "bank.example", 40))
    (ng.root / "1k").write_bytes(ONE_K)
    dead = closed_port()
    m = muxd(intercept_conf(pki, ng.port, **{"route bank.example": {"proxy": f"http://{LOCALHOST}:{dead}"}}))
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))  # checks bank.example
    with intercepted_tls(m, f"{LOCALHOST}:{ng.port}", ctx, server_hostname="bank.example") as tls:
        assert san_names(tls) == ["bank.example"], tls.getpeercert()
        resp = tls_get(tls, "/1k", f"bank.example:{ng.port}")
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    wait_until(lambda: len(ng.log_lines()) >= 1, timeout=5, what="nginx access log")
    assert "routed by the address, the origin verified as bank.example" in m.log(), m.log()
    # the same origin without the name: verified for 127.0.0.1, which its
    # certificate does not name
    with intercepted_tls(m, f"{LOCALHOST}:{ng.port}", ssl.create_default_context(cafile=str(local_ca(m))),
                         server_hostname=LOCALHOST) as tls:
        resp = tls_get(tls, "/1k", f"{LOCALHOST}:{ng.port}")
    assert resp.status == 502, resp
    assert "certificate" in resp.text.lower(), resp.text


def test_sni_tls_refuses_is_tunneled_untouched(muxd, nginx_tls, pki):
    """An SNI GnuTLS refuses as a server name (foo_bar.internal): the
    session is tunneled to the CONNECT target, and the client sees the
    origin's own certificate."""
    (nginx_tls.root / "1k").write_bytes(ONE_K)
    m = muxd(intercept_conf(pki, nginx_tls.port))
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.check_hostname = False  # the origin's certificate names localhost
    with intercepted_tls(m, f"{LOCALHOST}:{nginx_tls.port}", ctx, server_hostname="foo_bar.internal") as tls:
        der = tls.getpeercert(binary_form=True)
        resp = tls_get(tls, "/1k", f"localhost:{nginx_tls.port}")
    assert der == ssl.PEM_cert_to_DER_cert(pki.leaf_cert.read_text()), "the client did not see the origin's certificate"
    assert resp.status == 200, resp
    assert resp.body == ONE_K
    assert leaf_issued(m) == 0
    assert m.metrics().sum("muxd_requests_total", proto="tunnel") == 1


def half_closed_tls_request(m, authority, request, eof_within=None):
    """CONNECT, TLS (memory BIOs), the request in the same segment as the
    client's Finished, then a TCP FIN without close_notify (a client that
    half-closes after its request). Returns the decrypted answer up to the
    end of the first response's body, or what came before EOF. With
    eof_within (seconds), muxd must also close the connection within that
    deadline once the body is in."""
    ctx = ssl.create_default_context(cafile=str(local_ca(m)))
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, outg, server_hostname="localhost")
    resp, reader = open_tunnel(m.port, authority)
    assert resp.status == 200, resp
    s = reader.sock
    inc.write(bytes(reader.buf))
    with s:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outg.pending:
                    s.sendall(outg.read())
                data = s.recv(65536)
                assert data, "EOF during the TLS handshake"
                inc.write(data)
        obj.write(request)
        s.sendall(outg.read())
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            head, sep, body = got.partition(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if sep and length and len(body) >= int(length.group(1)):
                if eof_within is not None:
                    s.settimeout(eof_within)
                    try:
                        while s.recv(65536):
                            pass
                    except socket.timeout:
                        pytest.fail(f"muxd kept the connection open {eof_within}s after its answer")
                return got
            data = s.recv(65536)
            if not data:
                return got
            inc.write(data)
            while True:
                try:
                    part = obj.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not part:  # close_notify
                    break
                got += part


def test_dead_parent_502_reaches_a_client_that_half_closes(muxd, pki):
    """A client that sends its request and then a TCP FIN (no close_notify)
    still gets the 502 naming the parent: the end of its input must not
    invalidate the TLS session for muxd's answer (it did, depending on
    whether the FIN was read before the connect failed)."""
    port, dead = closed_port(), closed_port()
    m = muxd(intercept_conf(pki, port, **{"route *": {"proxy": f"http://{LOCALHOST}:{dead}"}}))
    authority = f"localhost:{port}"
    request = f"GET /x HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    for attempt in range(30):
        # closed well before the lingering close's limit: the client's EOF was seen
        got = half_closed_tls_request(m, authority, request, eof_within=2)
        assert got.startswith(b"HTTP/1.1 502 "), f"attempt {attempt}: {got!r}"
        assert f"proxy {LOCALHOST}:{dead}: connection refused".encode() in got, got
    # muxd freed them at once (their EOF was seen), not after the lingering close's 5 s
    wait_until(lambda: m.metrics().value("muxd_client_connections") == 1, timeout=2,
               what="the half-closed client connections freed")
