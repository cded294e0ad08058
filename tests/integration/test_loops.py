"""Loops and chains: each muxd instance has its own Via token (from the id in
STATE/instance-id), so a muxd behind another muxd works, while a request that
comes back to the same instance — by its Via token, or because its target is
one of muxd's own listen addresses — gets 508."""

import os
import re
import stat

import pytest

from support import LOCALHOST, connect, curl, HTTPReader, proxy_request, raw_exchange, wait_until


def reloaded(m, count):
    return wait_until(lambda: m.log().count("configuration reloaded") >= count, timeout=10,
                      what="the reload")


def test_instance_id_created_once_private_and_kept(muxd):
    m = muxd()
    path = m.state_dir / "instance-id"
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{32}\n", text), text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = m.via_token()
    m.stop()
    m.start()  # the same state directory: the same instance
    assert path.read_text() == text
    assert m.via_token() == token
    # and another state directory is another instance
    assert muxd().via_token() != token


def test_muxd_behind_muxd_reaches_the_origin(muxd, nginx):
    (nginx.root / "x").write_bytes(b"two muxds\n")
    site = muxd()
    host = muxd({"route *": {"proxy": f"http://{LOCALHOST}:{site.port}"}})
    assert host.via_token() != site.via_token()
    resp, reader = raw_exchange(host.port, proxy_request("GET", nginx.url("/x")))
    reader.sock.close()
    assert resp.status == 200, resp
    assert resp.body == b"two muxds\n"
    # the response went through both, each adding its own entry
    assert resp.headers.get("via") == f"{site.via_token()}, {host.via_token()}"


def test_muxd_behind_muxd_curl(muxd, nginx):
    (nginx.root / "x").write_bytes(b"ok\n")
    site = muxd()
    host = muxd({"route *": {"proxy": f"http://{LOCALHOST}:{site.port}"}})
    r = curl(host.port, nginx.url("/x"), "-w", "\n%{http_code}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ok\n\n200", r.stdout


def test_loop_through_another_muxd_is_508(muxd, nginx):
    """A -> B -> A: B cannot tell (A's address is not its own), A sees its Via."""
    a = muxd()
    b = muxd({"route *": {"proxy": f"http://{LOCALHOST}:{a.port}"}})
    a.reload({"route *": {"proxy": f"http://{LOCALHOST}:{b.port}"}})
    reloaded(a, 1)
    resp, reader = raw_exchange(a.port, proxy_request("GET", nginx.url("/x")))
    reader.sock.close()
    assert resp.status == 508, resp
    assert nginx.log_lines() == []


def test_own_via_entry_in_any_spelling_is_508(muxd, nginx):
    """Its own entry is found whatever blanks separate protocol and name
    (RWS: spaces or tabs, several), after comments holding commas; a name
    inside a comment, a longer name or one with a port is not its own."""
    (nginx.root / "x").write_bytes(b"ok\n")
    m = muxd()
    name = m.via_token()[4:]
    for via in (f"1.1\t{name}", f"1.1   {name}", f"1.0 a (x, y),\t1.1 \t{name} (c)",
                f"1.1 a, , HTTP/1.1 {name.upper()}"):
        resp, reader = raw_exchange(m.port, proxy_request("GET", nginx.url("/x"), [("Via", via)]))
        reader.sock.close()
        assert resp.status == 508, (via, resp)
    for via in (f"1.1 a (x, 1.1 {name} y)", f"1.1 {name}0", f"1.1 {name[:-1]}",
                f"1.1 {name}:3128", name):
        resp, reader = raw_exchange(m.port, proxy_request("GET", nginx.url("/x"), [("Via", via)]))
        reader.sock.close()
        assert resp.status == 200, (via, resp)


def test_muxd_as_its_own_parent_is_508(muxd, nginx):
    """The parent is muxd's own address: refused by address before any byte,
    also with via = off."""
    for via in ("on", "off"):
        m = muxd({"muxd": {"via": via}})
        m.reload({"muxd": {"via": via}, "route *": {"proxy": f"http://{LOCALHOST}:{m.port}"}})
        reloaded(m, 1)
        resp, reader = raw_exchange(m.port, proxy_request("GET", nginx.url("/x")))
        reader.sock.close()
        assert resp.status == 508, (via, resp)
        assert b"loops back into muxd" in resp.body
    assert nginx.log_lines() == []


@pytest.mark.parametrize("host", [LOCALHOST, "localhost", "[::1]", "0.0.0.0", "x.localhost"])
def test_absolute_form_to_own_address_is_508_with_via_off(muxd, host):
    m = muxd({"muxd": {"via": "off"}}, args=["-l", f"[::1]:0"])
    v6 = re.search(r"listening on \[::1\]:(\d+)", m.log())
    port = m.port
    if host == "[::1]":
        if not v6:
            pytest.skip("no IPv6 loopback here")
        port = int(v6.group(1))
    for path in ("/metrics", "/status.json", "/"):
        resp, reader = raw_exchange(m.port, proxy_request("GET", f"http://{host}:{port}{path}"))
        reader.sock.close()
        assert resp.status == 508, (host, path, resp)
        assert b"muxd_requests_total" not in resp.body


def test_connect_to_own_address_is_508(muxd):
    m = muxd({"muxd": {"via": "off"}})
    m.reload({"muxd": {"via": "off", "connect_ports": f"443 {m.port}"}})
    reloaded(m, 1)
    with connect(m.port) as s:
        s.sendall(f"CONNECT {LOCALHOST}:{m.port} HTTP/1.1\r\nHost: {LOCALHOST}:{m.port}\r\n\r\n".encode())
        resp = HTTPReader(s).read_response()
    assert resp.status == 508, resp


def test_names_that_resolve_to_own_address_are_508(muxd):
    """Caught when connecting, after resolution: the host's own name, when
    /etc/hosts maps it to 127.0.0.1."""
    import socket

    m = muxd({"muxd": {"via": "off"}})
    names = []
    try:
        if socket.gethostbyname(socket.gethostname()) == LOCALHOST:
            names.append(socket.gethostname())
    except OSError:
        pass
    if not names or "localhost" in names[0]:
        pytest.skip("this host's name does not resolve to 127.0.0.1")
    for name in names:
        resp, reader = raw_exchange(m.port, proxy_request("GET", f"http://{name}:{m.port}/metrics"))
        reader.sock.close()
        assert resp.status == 508, (name, resp)
        assert b"muxd_requests_total" not in resp.body
