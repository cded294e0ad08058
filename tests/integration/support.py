"""Helpers shared by the muxd integration tests.

Nothing here starts processes on its own: the fixtures in conftest.py do, and
clean up after themselves.  This module holds the pieces they and the tests
share:

* ``Origin``        a threaded, scriptable HTTP/1.1 origin server (raw sockets,
                    so a handler can misbehave on purpose);
* ``HTTPReader``    a strict HTTP/1.x response reader for raw client sockets
                    (interim 1xx, pipelining, truncation detection);
* ``Metrics``       a parser for muxd's Prometheus text;
* ``parse_access_log`` and small utilities (free ports, waiting, curl);
* ``make_pki``      a test CA, a leaf it signs and a self-signed certificate
                    (certtool from gnutls-bin);
* ``StreamServer``  a threaded raw TCP server (tunnel targets), and
                    ``open_tunnel`` to CONNECT through muxd.
"""

import hashlib
import json
import os
import random
import re
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

LOCALHOST = "127.0.0.1"
MUXD_BIN = os.environ.get("MUXD_BIN") or str(Path(__file__).resolve().parents[2] / "build" / "muxd")
# set by `make check SANITIZE=1`: the binary runs under ASan/UBSan, so memory
# bounds (RSS) are not meaningful, and everything is slower
SANITIZE = os.environ.get("MUXD_SANITIZE") == "1"


# --------------------------------------------------------------------------
# small utilities


def free_port():
    """A loopback TCP port that was free a moment ago (for nginx, which
    cannot report an ephemeral port)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def closed_port():
    """A loopback port with nothing listening on it: connect() is refused."""
    return free_port()


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_tool(tool, package):
    """Fail (never skip, never pass) when a peer program that
    scripts/install-deps installs is missing: `make check` runs install-deps
    first, so its absence is a broken setup, not a reason to test less.
    tool: an absolute path or a name looked up in PATH; returns the path."""
    import shutil

    import pytest

    path = tool if os.path.isabs(tool) else shutil.which(tool)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{tool} is missing: scripts/install-deps installs it (Debian package {package})",
                    pytrace=False)
    return path


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pattern_chunks(n, seed=0, chunk=1 << 20):
    """n deterministic pseudo-random bytes, yielded in chunks of 1 MiB; each
    chunk starts with its index, so reordered or repeated chunks show."""
    block = random.Random(seed).randbytes(chunk)
    i = 0
    while n > 0:
        piece = (b"%08d" % i + block[8:])[:n]
        yield piece
        n -= len(piece)
        i += 1


def pattern_bytes(n, seed=0):
    return b"".join(pattern_chunks(n, seed))


def clean_env():
    """The environment without proxy variables, so that clients talk to the
    proxy we name and nothing else."""
    env = dict(os.environ)
    for k in list(env):
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            del env[k]
    return env


def curl(proxy_port, url, *args, timeout=30, check=False, input=None):
    """Run one curl process through the proxy; return CompletedProcess
    (stdout = body bytes unless args redirect it)."""
    cmd = ["curl", "-sS", "--noproxy", "", "--max-time", str(timeout)]
    if proxy_port is not None:
        cmd += ["-x", f"http://{LOCALHOST}:{proxy_port}"]
    cmd += list(args) + [url]
    return subprocess.run(
        cmd,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        timeout=timeout + 10,
        check=check,
    )


# --------------------------------------------------------------------------
# HTTP messages


class Headers:
    """An ordered, case-insensitive multi-map of header fields."""

    def __init__(self, items=()):
        self.items = [(n, v) for n, v in items]

    def get_all(self, name):
        name = name.lower()
        return [v for n, v in self.items if n.lower() == name]

    def get(self, name, default=None):
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def __contains__(self, name):
        return bool(self.get_all(name))

    def tokens(self, name):
        """Comma-separated list values of a field, lower-cased, stripped."""
        out = []
        for v in self.get_all(name):
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out

    def names(self):
        return {n.lower() for n, _ in self.items}

    def __repr__(self):
        return f"Headers({self.items!r})"


class IncompleteResponse(Exception):
    """The peer closed the connection before a complete message arrived."""


class Response:
    def __init__(self, version, status, reason, headers, body=b"", interim=()):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.interim = list(interim)  # 1xx responses that preceded this one
        self.trailers = Headers()  # trailer fields of a chunked body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class HTTPReader:
    """Reads HTTP/1.x messages from a connected socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.trailers = Headers()  # of the last chunked body read

    def _fill(self):
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker, limit=1 << 20):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill():
                raise IncompleteResponse(f"EOF while waiting for {marker!r}; have {bytes(self.buf[:200])!r}")

    def read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise IncompleteResponse(f"EOF after {len(self.buf)} of {n} body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise ValueError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError(f"bad header line {line!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), Headers(headers)

    def read_response(self, method="GET"):
        """One final response (1xx responses before it are collected in
        .interim).  Raises IncompleteResponse on a truncated body."""
        interim = []
        while True:
            version, status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(Response(version, status, reason, headers))
                continue
            break
        resp = Response(version, status, reason, headers, interim=interim)
        resp.body = b"".join(self.iter_body(headers, status, method))
        resp.trailers = self.trailers
        return resp

    def iter_body(self, headers, status=200, method="GET"):
        """Yield the body of a response whose head was just read, piece by
        piece as it arrives.  Raises IncompleteResponse if it is cut short."""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return
        self.trailers = Headers()
        te = headers.tokens("transfer-encoding")
        if te:
            assert te[-1] == "chunked", f"unexpected transfer-encoding {te}"
            while True:
                line = self.read_until(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    trailers = []
                    while (line := self.read_until(b"\r\n")) != b"\r\n":
                        name, _, value = line[:-2].partition(b":")
                        trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
                    self.trailers = Headers(trailers)
                    return
                yield from self._iter_exact(size)
                if self.read_exact(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
        elif "content-length" in headers:
            yield from self._iter_exact(int(headers.get_all("content-length")[0]))
        else:
            while self.buf or self._fill():
                out = bytes(self.buf)
                self.buf.clear()
                yield out

    def _iter_exact(self, n):
        while n > 0:
            if not self.buf and not self._fill():
                raise IncompleteResponse(f"EOF with {n} body bytes missing")
            piece = bytes(self.buf[:n])
            del self.buf[: len(piece)]
            n -= len(piece)
            yield piece

    def wait_eof(self, timeout=5.0):
        """True if the peer closes the connection within timeout (any bytes
        still arriving are discarded)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except socket.timeout:
            return False
        return True


def connect(port, timeout=10.0):
    s = socket.create_connection((LOCALHOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_exchange(port, data, timeout=10.0, method="GET"):
    """Send raw bytes to port, read one response.  Returns (response, reader);
    the caller closes reader.sock."""
    s = connect(port, timeout)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading everything
    reader = HTTPReader(s)
    return reader.read_response(method), reader


def proxy_request(method, url, headers=(), body=None, version="HTTP/1.1", host=True):
    """Serialise an absolute-form request (http:// or https://) to send to
    the proxy."""
    m = re.match(r"https?://([^/]+)(/.*)?$", url)
    lines = [f"{method} {url} {version}"]
    if host and m:
        lines.append(f"Host: {m.group(1)}")
    for n, v in headers:
        lines.append(f"{n}: {v}")
    if body is not None and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data + (body or b"")


# --------------------------------------------------------------------------
# scriptable origin server


class OriginRequest:
    def __init__(self, conn_id, index, method, target, version, headers):
        self.conn_id = conn_id  # which TCP connection (0, 1, ...)
        self.index = index  # the n-th request on that connection (0, 1, ...)
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = b""
        self.chunked = False
        self.trailers = []  # (name, value) of a chunked body's trailer section
        self.sent_continue = False

    @property
    def path(self):
        return self.target

    def as_json(self):
        return {
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": self.headers.items,
            "length": len(self.body),
            "sha256": sha256(self.body),
            "chunked": self.chunked,
            "conn": self.conn_id,
            "index": self.index,
        }


class OriginConn:
    """What a handler uses to answer: respond() / send() / close()."""

    def __init__(self, origin, sock):
        self.origin = origin
        self.sock = sock
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def respond(self, status=200, headers=(), body=b"", reason="OK", chunked=False):
        if isinstance(body, str):
            body = body.encode()
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{n}: {v}" for n, v in headers]
        names = {n.lower() for n, _ in headers}
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if chunked:
            payload = b""
            for i in range(0, len(body), 4000):
                piece = body[i : i + 4000]
                payload += b"%x\r\n%s\r\n" % (len(piece), piece)
            payload += b"0\r\n\r\n"
            self.send(head + payload)
        else:
            self.send(head + body)

    def respond_json(self, obj, headers=()):
        self.respond(200, list(headers) + [("Content-Type", "application/json")], json.dumps(obj))

    def close(self):
        self.closed = True


def echo_handler(req, conn):
    """Answer with a JSON description of the request (headers, body hash)."""
    conn.respond_json(req.as_json())


class Origin:
    """A threaded HTTP/1.1 origin on an ephemeral loopback port.

    handler(req, conn) is called for every parsed request.  It answers with
    conn.respond()/conn.send(), and may call conn.close() to end the
    connection (without answering, if it likes).  Requests and connection
    counts are recorded in .requests and .connections.
    """

    def __init__(self, handler=echo_handler, auto_continue=True):
        self.handler = handler
        self.auto_continue = auto_continue
        self.requests = []
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.socks = set()
        origin = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                origin._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self.server = Server((LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path="/"):
        return f"http://{LOCALHOST}:{self.port}{path}"

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def _serve(self, sock):
        with self.lock:
            conn_id = self.connections
            self.connections += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.socks.add(sock)
        conn = OriginConn(self, sock)
        rfile = sock.makefile("rb")
        try:
            index = 0
            while not conn.closed and not self.stopping.is_set():
                req = self._read_request(rfile, conn, conn_id, index)
                if req is None:
                    break
                with self.lock:
                    self.requests.append(req)
                self.handler(req, conn)
                index += 1
        except (OSError, ValueError) as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            with self.lock:
                self.active -= 1
                self.socks.discard(sock)
            try:
                rfile.close()
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _read_request(self, rfile, conn, conn_id, index):
        line = rfile.readline(70000)
        if not line:
            return None
        m = re.match(rb"([A-Z]+) (\S+) (HTTP/1\.[01])\r\n$", line)
        if not m:
            raise ValueError(f"bad request line {line!r}")
        headers = []
        while True:
            h = rfile.readline(200000)
            if not h:
                raise ValueError("EOF in request head")
            if h == b"\r\n":
                break
            name, sep, value = h.rstrip(b"\r\n").partition(b":")
            if not sep:
                raise ValueError(f"bad header {h!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        req = OriginRequest(conn_id, index, m.group(1).decode(), m.group(2).decode(), m.group(3).decode(), Headers(headers))
        if self.auto_continue and "100-continue" in req.headers.tokens("expect"):
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            req.sent_continue = True
        te = req.headers.tokens("transfer-encoding")
        if te:
            req.chunked = True
            body = bytearray()
            while True:
                size_line = rfile.readline(1000)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (t := rfile.readline(10000)) not in (b"\r\n", b""):
                        n, _, v = t.decode("latin-1").rstrip("\r\n").partition(":")
                        req.trailers.append((n.strip(), v.strip()))
                    break
                body += rfile.read(size)
                if rfile.read(2) != b"\r\n":
                    raise ValueError("bad chunk")
            req.body = bytes(body)
        elif "content-length" in req.headers:
            n = int(req.headers.get_all("content-length")[0])
            req.body = rfile.read(n)
            if len(req.body) != n:
                raise ValueError("EOF in request body")
        return req

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------
# metrics and logs


class Metrics(dict):
    """Prometheus samples keyed by (name, ((label, value), ...)) sorted."""

    @classmethod
    def parse(cls, text):
        m = cls()
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            mm = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if not mm:
                continue
            labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', mm.group(2) or "")))
            m[(mm.group(1), labels)] = float(mm.group(3))
        return m

    def value(self, name, **labels):
        """The sample with exactly these labels (0 when absent)."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def sum(self, name, **labels):
        """Sum of all samples of name whose labels include these."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.items() if n == name and want <= set(lab))

    def names(self):
        return {n for n, _ in self}


ACCESS_RE = re.compile(
    r"^(?P<time>.+?) (?P<client>\S+) (?P<method>[A-Z]+) (?P<url>\S+) (?P<status>\d{3}) "
    r"(?P<bytes_in>\d+) (?P<bytes_out>\d+) (?P<duration>\d+(?:\.\d+)?)ms (?P<proto>\S+) (?P<conn>new|reused|-)$"
)


def parse_access_log(path):
    """Parsed lines of a muxd access log (a list of dicts); lines that do
    not match the documented format are returned as {'bad': line}."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            m = ACCESS_RE.match(line)
            out.append(m.groupdict() if m else {"bad": line})
    return out


def tcp_connections_to(port):
    """{(local, remote)} of the TCP connections to port (any state), as the
    kernel lists them in /proc/net/tcp{,6} (hex addresses): a connect()
    shows here at once, before any server thread accepts it, and stays (in
    TIME_WAIT) after its socket closed.  Compare with an earlier call, since
    older connections to the same port number may still be listed."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, remote = row.split()[1:3]
            if int(remote.rsplit(":", 1)[1], 16) == port:
                found.add((local, remote))
    return found


def vm_hwm_kib(pid):
    """Peak resident set size of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


# --------------------------------------------------------------------------
# TLS: a test PKI


class PKI:
    """Paths of the test certificates (PEM): ca_cert (trust anchor), leaf
    (signed by the CA, SAN IP 127.0.0.1 and DNS localhost) and self_signed
    (same names, signed by itself)."""

    def __init__(self, d):
        self.dir = Path(d)
        self.ca_cert = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.leaf_cert = self.dir / "leaf.pem"
        self.leaf_key = self.dir / "leaf.key"
        self.self_cert = self.dir / "self.pem"
        self.self_key = self.dir / "self.key"

    @property
    def leaf(self):
        return (self.leaf_cert, self.leaf_key)

    @property
    def self_signed(self):
        return (self.self_cert, self.self_key)


CA_TEMPLATE = """\
cn = "muxd test CA"
organization = "muxd tests"
serial = 1
expiration_days = 30
ca
cert_signing_key
crl_signing_key
"""

SERVER_TEMPLATE = """\
cn = "{cn}"
organization = "muxd tests"
serial = {serial}
expiration_days = 30
dns_name = "localhost"
ip_address = "127.0.0.1"
tls_www_server
signing_key
encryption_key
"""


def _certtool(*args):
    subprocess.run(["certtool", *args], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def make_pki(d):
    """Create a CA, a leaf signed by it and a self-signed certificate in d."""
    pki = PKI(d)
    pki.dir.mkdir(parents=True, exist_ok=True)
    for key in (pki.ca_key, pki.leaf_key, pki.self_key):
        _certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(key))
    tmpl = pki.dir / "ca.tmpl"
    tmpl.write_text(CA_TEMPLATE)
    _certtool("--generate-self-signed", "--load-privkey", str(pki.ca_key), "--template", str(tmpl),
              "--outfile", str(pki.ca_cert))
    tmpl = pki.dir / "leaf.tmpl"
    tmpl.write_text(SERVER_TEMPLATE.format(cn="localhost", serial=2))
    _certtool("--generate-certificate", "--load-privkey", str(pki.leaf_key), "--load-ca-certificate",
              str(pki.ca_cert), "--load-ca-privkey", str(pki.ca_key), "--template", str(tmpl),
              "--outfile", str(pki.leaf_cert))
    tmpl = pki.dir / "self.tmpl"
    tmpl.write_text(SERVER_TEMPLATE.format(cn="localhost (self-signed)", serial=3))
    _certtool("--generate-self-signed", "--load-privkey", str(pki.self_key), "--template", str(tmpl),
              "--outfile", str(pki.self_cert))
    return pki


# --------------------------------------------------------------------------
# raw TCP servers and CONNECT tunnels


class StreamServer:
    """A threaded raw TCP server on an ephemeral loopback port (127.0.0.1, or
    ::1 with host="::1"; binding raises OSError when it is unusable).

    handler(sock) runs in its own thread for every accepted connection and
    owns nothing: the server closes the socket when the handler returns.
    .connections counts accepted connections, .errors collects handler
    exceptions."""

    def __init__(self, handler, host=LOCALHOST):
        self.handler = handler
        self.host = host
        self.connections = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.socks = set()
        self.threads = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.bind((host, 0))
            self.listener.listen(64)
        except OSError:
            self.listener.close()
            raise
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @property
    def authority(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self.lock:
                self.connections += 1
                self.socks.add(sock)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock):
        try:
            self.handler(sock)
        except Exception as e:  # noqa: BLE001 - recorded for the test to inspect
            with self.lock:
                self.errors.append(repr(e))
        finally:
            with self.lock:
                self.socks.discard(sock)
            sock.close()

    def stop(self):
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


def recv_all(sock, bufsize=1 << 18):
    """Read until EOF (a reset counts as EOF); return the bytes."""
    out = bytearray()
    while True:
        try:
            data = sock.recv(bufsize)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


def echo_stream(sock):
    """StreamServer handler: echo every byte; on EOF half-close and end."""
    while True:
        try:
            data = sock.recv(1 << 18)
        except ConnectionResetError:
            return
        if not data:
            break
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def open_tunnel(proxy_port, authority, early=b"", timeout=10.0, headers=()):
    """Send `CONNECT authority` to muxd (plus `early` bytes in the same
    write) and read the answer's head.  Returns (response, reader): for a
    200 the response has no body and reader.buf holds any tunnel bytes that
    arrived with the head; otherwise the body has been read.  The caller
    closes reader.sock."""
    s = connect(proxy_port, timeout)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{n}: {v}" for n, v in headers]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + early)
    reader = HTTPReader(s)
    try:
        version, status, reason, hdrs = reader.read_head()
        resp = Response(version, status, reason, hdrs)
        if not 200 <= status < 300:
            resp.body = b"".join(reader.iter_body(hdrs, status))
    except BaseException:
        s.close()
        raise
    return resp, reader


# --------------------------------------------------------------------------
# HTTP/3 origin: gtlsserver (Debian package ngtcp2-server)

GTLSSERVER = os.environ.get("GTLSSERVER") or "/usr/sbin/gtlsserver"


def free_udp_port(host=LOCALHOST):
    """A loopback UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udp_bound(port, host=LOCALHOST):
    """True when some socket is bound to UDP host:port (from /proc/net/udp)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in list(f)[1:])
    except OSError:
        return False


class H3Server:
    """gtlsserver (ngtcp2's example server) serving the files of .root over
    HTTP/3 on UDP 127.0.0.1:.port with the given certificate.  stop() and
    start() again keep the port (so a cached Alt-Svc stays right)."""

    def __init__(self, workdir, cert, port=None, options=()):
        self.dir = Path(workdir)
        self.root = self.dir / "www"
        self.root.mkdir(parents=True)
        self.log_path = self.dir / "gtlsserver.log"
        self.cert, self.key = cert
        self.options = list(options)
        self.port = port
        self.proc = None
        self.quiet = True  # False: gtlsserver logs packets (not frames' data)

    def start(self, timeout=10.0):
        for _ in range(5):
            port = self.port or free_udp_port()
            verbosity = ["-q"] if self.quiet else ["--no-quic-dump", "--no-http-dump"]
            cmd = [GTLSSERVER, *verbosity, "-d", str(self.root), *self.options, LOCALHOST, str(port),
                   str(self.key), str(self.cert)]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if udp_bound(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            self.stop()
            if self.port:  # a fixed port that cannot be bound: give up
                break
        raise AssertionError(f"gtlsserver did not start; see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.port:
            wait_until(lambda: not udp_bound(self.port), timeout=5, what=f"UDP port {self.port} released")


def recv_within(sock, timeout):
    """What a socket gives within timeout seconds: the bytes, b"" when
    nothing came, None once the connection is gone (EOF, reset, TLS error)."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1 << 16)
    except (socket.timeout, TimeoutError):
        return b""
    except OSError:  # ConnectionResetError and ssl.SSLError among them
        return None
    return data or None
