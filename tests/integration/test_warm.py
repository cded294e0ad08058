"""`muxd warm URL...` (issue 17, item 5): the running muxd opens a pool
connection to each origin now (POST /warm, loopback admin only), answers
when each is connected or failed, within connect_timeout, and a request
after it uses the warmed connection. A non-loopback client is refused: see
test_netns.py::test_warm_is_for_loopback_clients_only."""

import re
import subprocess
import time

from support import LOCALHOST, MUXD_BIN, clean_env, closed_port, curl, raw_exchange, wait_until

BODY = b"warm body\n"


def warm(m, *urls, timeout=60):
    return subprocess.run([MUXD_BIN, "warm", "-c", str(m.conf_path), "-l", f"{LOCALHOST}:{m.port}"] + list(urls),
                          capture_output=True, text=True, timeout=timeout, env=clean_env())


def opened(m):
    return m.metrics().sum("muxd_upstream_connections_opened_total")


def test_warm_opens_the_connection_the_next_request_uses(muxd, nginx, nginx_tls, pki, tmp_path):
    """One http:// and one https:// (h1 nginx, verified by the route's
    ca_file) origin: warm opens one connection each; the requests after it
    (absolute-form http, intercepted https) open none."""
    (nginx.root / "a").write_bytes(BODY)
    (nginx_tls.root / "b").write_bytes(BODY)
    m = muxd({"intercept": {"ports": nginx_tls.port}, "route *": {"ca_file": pki.ca_cert}})
    plain, tls = f"http://{LOCALHOST}:{nginx.port}/", f"https://localhost:{nginx_tls.port}/"

    out = warm(m, plain, tls)
    assert out.returncode == 0, out
    assert out.stdout == f"{plain}: connected\n{tls}: connected\n", out.stdout
    assert out.stderr == ""
    assert opened(m) == 2
    idle = m.metrics().sum("muxd_upstream_connections", state="idle")
    assert idle == 2, "the warmed connections wait idle in the pool"
    assert m.metrics().sum("muxd_requests_total") == 0, "warming sends no request"

    again = warm(m, tls, plain)
    assert again.returncode == 0, again
    assert again.stdout == f"{tls}: already warm\n{plain}: already warm\n", again.stdout

    r = curl(m.port, f"{plain}a", "--noproxy", "")
    assert r.returncode == 0 and r.stdout == BODY, r
    ca = m.state_dir / "ca.pem"
    r = curl(m.port, f"{tls}b", "--cacert", str(ca), "--noproxy", "")
    assert r.returncode == 0 and r.stdout == BODY, r
    met = m.metrics()
    assert met.sum("muxd_upstream_connections_opened_total") == 2, "a request opened a connection of its own"
    assert met.sum("muxd_upstream_reuses_total") == 2, "each request went on a warmed connection"
    assert len(nginx.connections()) == 1 and len(nginx_tls.connections()) == 1


def test_warm_reports_an_unreachable_origin_and_exits_non_zero(muxd, nginx):
    m = muxd({})
    dead, ok = f"http://{LOCALHOST}:{closed_port()}/", f"http://{LOCALHOST}:{nginx.port}/"
    out = warm(m, dead, ok)
    assert out.returncode == 1, out
    lines = out.stdout.splitlines()
    assert lines[1] == f"{ok}: connected", out.stdout
    assert re.fullmatch(re.escape(dead) + r": failed: .*connection refused.*", lines[0]), out.stdout
    # nobody's error: nothing about it in muxd's log at the default level
    assert "refused" not in m.log() and "warn" not in m.log() and "error" not in m.log(), m.log()

    name = "https://no-such-host.invalid/"
    out = warm(m, name)
    assert out.returncode == 1 and out.stdout.startswith(f"{name}: failed: "), out
    assert "no-such-host.invalid" not in m.log(), m.log()


def test_warm_answers_within_connect_timeout(muxd, stream_server):
    """An origin that accepts TCP and never answers the TLS handshake: the
    answer comes once connect_timeout (1s here) has passed, naming it."""
    silent = stream_server(lambda sock: (sock.recv(65536), sock.recv(65536)))  # until muxd gives up
    m = muxd({"pool": {"connect_timeout": "1s"}})
    url = f"https://{LOCALHOST}:{silent.port}/"
    start = time.monotonic()
    out = warm(m, url, timeout=30)
    assert out.returncode == 1, out
    assert time.monotonic() - start < 10
    assert out.stdout.startswith(f"{url}: failed: ") and "timed out" in out.stdout, out.stdout


def test_warm_usage_errors(muxd, tmp_path):
    m = muxd({})
    for args in ([], ["ftp://example.org/"], ["example.org"], ["http://"],
                 [f"http://{LOCALHOST}:1/", "not a url"]):
        out = subprocess.run([MUXD_BIN, "warm", "-l", f"{LOCALHOST}:{m.port}"] + args, capture_output=True,
                             text=True, timeout=30, env=clean_env())
        assert out.returncode == 2, (args, out)
        assert out.stdout == "" and ("usage: muxd warm" in out.stderr or "is not an http:// or https:// URL"
                                     in out.stderr), (args, out.stderr)
    assert opened(m) == 0
    # no daemon: a clear line, exit 1
    out = subprocess.run([MUXD_BIN, "warm", "-l", f"{LOCALHOST}:{closed_port()}", "http://example.org/"],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert out.returncode == 1 and "no muxd answers" in out.stderr, out


def test_warm_endpoint_answers_post_with_url_parameters_only(muxd, nginx):
    m = muxd({})
    host = f"Host: {LOCALHOST}:{m.port}\r\n"

    def ask(method, target):
        resp, reader = raw_exchange(m.port, f"{method} {target} HTTP/1.1\r\n{host}Content-Length: 0\r\n"
                                            "Connection: close\r\n\r\n".encode(), timeout=30)
        reader.sock.close()
        return resp

    r = ask("GET", f"/warm?url=http://{LOCALHOST}:{nginx.port}/")
    assert r.status == 405, r
    for target in ("/warm", "/warm?u=http://x/", "/warm?url=ftp://x/", "/warm?url=http%3A%2F%2Fx%2", "/warm?url=a%20b"):
        r = ask("POST", target)
        assert r.status == 400, (target, r)
    assert opened(m) == 0
    enc = f"http%3A%2F%2F{LOCALHOST}%3A{nginx.port}%2F"
    r = ask("POST", f"/warm?url={enc}&url={enc}")
    assert r.status == 200, r
    # the same origin twice: one connection, both lines answered by it
    assert r.text == f"connected http://{LOCALHOST}:{nginx.port}/\nconnected http://{LOCALHOST}:{nginx.port}/\n", r.text
    assert opened(m) == 1
    r = ask("POST", f"/warm?url=http://{LOCALHOST}:{closed_port()}/")
    assert r.status == 502 and r.text.startswith("failed "), r


def test_warm_in_flight_at_shutdown_still_answers(muxd, stream_server):
    """SIGTERM while a warm waits: the answer still comes (within
    connect_timeout), then muxd exits cleanly."""
    silent = stream_server(lambda sock: (sock.recv(65536), sock.recv(65536)))
    m = muxd({"pool": {"connect_timeout": "2s"}})
    url = f"https://{LOCALHOST}:{silent.port}/"
    p = subprocess.Popen([MUXD_BIN, "warm", "-l", f"{LOCALHOST}:{m.port}", url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=clean_env())
    wait_until(lambda: silent.connections >= 1, timeout=10, what="muxd connecting to the origin")
    assert m.stop(timeout=20) == 0, m.log()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 1 and out.startswith(f"{url}: failed: "), (out, err)
