"""A client that is not on loopback: a network namespace of the test's own,
joined to this host by a veth pair on a private /24 that exists only inside
this sandbox. muxd serves such a client as a proxy (when `allow` lists it) but
never shows it its admin pages."""

import os
import re
import subprocess

import pytest

from support import wait_until


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


def test_admin_pages_only_for_loopback_clients(muxd, nginx, netns):
    ns, host_ip, client_ip = netns
    (nginx.root / "x").write_bytes(b"through muxd\n")
    m = muxd({"muxd": {"allow": f"127.0.0.0/8 {client_ip}/32"}}, args=["-l", f"{host_ip}:0"])
    wait_until(lambda: re.search(rf"listening on {re.escape(host_ip)}:(\d+)", m.log()), timeout=5,
               what="the second listener")
    port = re.search(rf"listening on {re.escape(host_ip)}:(\d+)", m.log()).group(1)
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
