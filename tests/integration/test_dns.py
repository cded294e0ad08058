"""Name resolution and happy eyeballs: /etc/hosts, the RFC 6761 special
names, and the race between IPv6 and IPv4 addresses of one host."""

import socket
import socketserver
import threading

import pytest

from support import curl


class V6Origin(socketserver.ThreadingTCPServer):
    """An origin reachable on [::1] only."""

    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True


class Answer(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv6")


@pytest.fixture
def v6_origin():
    try:
        server = V6Origin(("::1", 0), Answer)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_hosts_file_name(muxd, origin):
    o = origin()
    m = muxd()
    r = curl(m.port, f"http://localhost:{o.port}/x")
    assert r.returncode == 0, r.stderr
    assert b'"/x"' in r.stdout


def test_ipv6_refused_falls_back_to_ipv4(muxd, origin):
    # *.localhost is ::1 and 127.0.0.1 (RFC 6761); IPv6 is tried first and
    # refused here, so the IPv4 attempt must win without the client noticing.
    o = origin()
    m = muxd()
    r = curl(m.port, f"http://api.localhost:{o.port}/he")
    assert r.returncode == 0, r.stderr
    assert b'"/he"' in r.stdout
    assert o.connections == 1


def test_ipv6_first_when_it_answers(muxd, v6_origin):
    m = muxd()
    r = curl(m.port, f"http://api.localhost:{v6_origin}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"v6"


def test_ipv6_literal_origin(muxd, v6_origin):
    m = muxd()
    r = curl(m.port, f"http://[::1]:{v6_origin}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"v6"
