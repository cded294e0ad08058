"""A client that is not on loopback: a network namespace of the test's own,
joined to this host by a veth pair on a private /24 that exists only inside
this sandbox. muxd serves such a client as a proxy (when `allow` lists it) but
never shows it its admin pages — not in origin form, and not through the proxy
to muxd's own addresses (508 by address, also with via = off) — and, once
`allow` names a network that is not loopback, refuses loopback targets
(deny_loopback_targets = auto) with 403."""

import os
import re
import subprocess

import pytest

from support import LOCALHOST, MUXD_BIN, curl, wait_until


def sh(*cmd, check=True, ns=None):
    if ns:
        cmd = ("ip", "netns", "exec", ns) + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


@pytest.fixture
def netns():
    """(namespace, host address, client address); skipped where namespaces or
    veth pairs cannot be made (not root, no iproute2)."""
    tag = os.getpid() % 10000
    ns, host_if, ns_if = f"muxdt{tag}", f"mxa{tag}", f"mxb{tag}"
    net = f"10.213.{tag % 250}"
    host_ip, client_ip = f"{net}.1", f"{net}.2"
    try:
        sh("ip", "netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create a network namespace here: {e}")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "addr", "add", f"{client_ip}/24", "dev", ns_if, ns=ns)
        sh("ip", "link", "set", ns_if, "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        yield ns, host_ip, client_ip
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot set up a veth pair here: {e.stderr.strip()}")
    finally:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_if, check=False)


def curl_from(ns, *args):
    return sh("curl", "-sS", "--noproxy", "", "-m", "10", "-o", "-", "-w", "\n%{http_code}", *args, ns=ns,
              check=False)


def start_muxd(muxd, host_ip, conf):
    """muxd listening on loopback and on the host's end of the veth pair;
    returns (muxd, the host-side port)."""
    m = muxd(conf, args=["-l", f"{host_ip}:0"])
    wait_until(lambda: re.search(rf"listening on {re.escape(host_ip)}:(\d+)", m.log()), timeout=5,
               what="the second listener")
    return m, int(re.search(rf"listening on {re.escape(host_ip)}:(\d+)", m.log()).group(1))


def status_of(r):
    assert r.returncode == 0, r.stderr
    body, status = r.stdout.rsplit("\n", 1)
    return status, body


def test_admin_pages_only_for_loopback_clients(muxd, nginx, netns):
    ns, host_ip, client_ip = netns
    (nginx.root / "x").write_bytes(b"through muxd\n")
    # nginx is on loopback: this test lets the client reach it
    m, port = start_muxd(muxd, host_ip, {"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32",
                                                  "deny_loopback_targets": "off"}})
    proxy = f"http://{host_ip}:{port}"

    # the allowed, non-loopback client may use the proxy ...
    r = curl_from(ns, "-x", proxy, nginx.url("/x"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "through muxd\n\n200", r.stdout

    # ... but muxd's own pages are for loopback clients only
    for page in ("/", "/metrics", "/status.json", "/ca.pem"):
        r = curl_from(ns, f"{proxy}{page}")
        assert r.returncode == 0, r.stderr
        body, status = r.stdout.rsplit("\n", 1)
        assert status == "403", (page, r.stdout)
        assert "loopback" in body, (page, body)

    # the same page from loopback works
    assert m.admin("/metrics").status == 200


def test_warm_is_for_loopback_clients_only(muxd, nginx, netns):
    """POST /warm (muxd warm) from an allowed but non-loopback client is
    refused like the other admin pages, and opens nothing."""
    ns, host_ip, client_ip = netns
    m, port = start_muxd(muxd, host_ip, {"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32",
                                                  "deny_loopback_targets": "off"}})
    url = nginx.url("/")
    status, body = status_of(curl_from(ns, "-X", "POST", f"http://{host_ip}:{port}/warm?url={url}"))
    assert status == "403" and "loopback" in body, (status, body)
    out = sh(MUXD_BIN, "warm", "-l", f"{host_ip}:{port}", url, ns=ns, check=False)
    assert out.returncode == 1 and "403" in out.stderr and "loopback" in out.stderr, out
    assert m.metrics().sum("muxd_upstream_connections_opened_total") == 0
    # from loopback it works
    out = sh(MUXD_BIN, "warm", "-l", f"{LOCALHOST}:{m.port}", url, check=False)
    assert out.returncode == 0 and out.stdout == f"{url}: connected\n", out


@pytest.mark.parametrize("via", ["on", "off"])
def test_admin_pages_not_reachable_through_the_proxy(muxd, netns, via):
    """GET http://127.0.0.1:PORT/metrics through muxd would be muxd asking
    itself, as a loopback client: refused by address whatever the Via
    setting (and whatever deny_loopback_targets says)."""
    ns, host_ip, client_ip = netns
    m, port = start_muxd(muxd, host_ip, {"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32", "via": via,
                                                  "deny_loopback_targets": "off"}})
    proxy = f"http://{host_ip}:{port}"
    for target in (f"http://127.0.0.1:{m.port}", f"http://localhost:{m.port}", f"http://{host_ip}:{port}"):
        for page in ("/", "/metrics", "/status.json", "/ca.pem"):
            status, body = status_of(curl_from(ns, "-x", proxy, f"{target}{page}"))
            assert status == "508", (target, page, status, body)
            assert "muxd_requests_total" not in body
    # CONNECT to muxd's own address is a loop too
    r = curl_from(ns, "-p", "-x", proxy, f"http://{host_ip}:{port}/metrics", "-w", "\n%{http_connect}")
    assert r.stdout.rsplit("\n", 1)[-1] == "508", r.stdout
    assert m.admin("/metrics").status == 200


def test_deny_loopback_targets_auto(muxd, nginx, stream_server, netns):
    ns, host_ip, client_ip = netns
    (nginx.root / "x").write_bytes(b"loopback service\n")

    def answer(sock):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot lo!!\n")

    on_host = stream_server(answer, host=host_ip)
    # allow names a network that is not loopback: auto means on
    m, port = start_muxd(muxd, host_ip, {"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32",
                                                  "connect_ports": f"443 {nginx.port}"}})
    proxy = f"http://{host_ip}:{port}"
    for target in (nginx.url("/x"), f"http://localhost:{nginx.port}/x"):
        status, body = status_of(curl_from(ns, "-x", proxy, target))
        assert status == "403", (target, status, body)
        assert "deny_loopback_targets" in body, body
    # a tunnel too
    r = curl_from(ns, "-p", "-x", proxy, nginx.url("/x"), "-w", "\n%{http_connect}")
    assert r.stdout.rsplit("\n", 1)[-1] == "403", r.stdout
    assert nginx.log_lines() == []
    # targets that are not loopback still work
    status, body = status_of(curl_from(ns, "-x", proxy, f"http://{host_ip}:{on_host.port}/y"))
    assert (status, body) == ("200", "not lo!!\n")

    # off: the host's loopback services are reachable through muxd
    m.reload({"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32", "deny_loopback_targets": "off"}})
    wait_until(lambda: "configuration reloaded" in m.log(), timeout=10, what="the reload")
    status, body = status_of(curl_from(ns, "-x", proxy, nginx.url("/x")))
    assert (status, body) == ("200", "loopback service\n")


def test_deny_loopback_targets_off_by_default_for_loopback_only_allow(muxd, nginx):
    (nginx.root / "x").write_bytes(b"ok\n")
    m = muxd()
    r = curl(m.port, nginx.url("/x"))
    assert r.returncode == 0 and r.stdout == b"ok\n", r
    m2 = muxd({"muxd": {"deny_loopback_targets": "on"}})
    r = curl(m2.port, nginx.url("/x"), "-w", "\n%{http_code}")
    assert r.stdout.endswith(b"\n403"), r.stdout
