"""Admin endpoints: /metrics (strict Prometheus text), /status.json, the HTML
status page (rendered in headless Chromium when it is installed), loop
protection, and the `muxd status` command."""

import json
import math
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from support import (
    LOCALHOST,
    MUXD_BIN,
    clean_env,
    closed_port,
    curl,
    recv_all,
    require_tool,
    wait_until,
)

# DESIGN.md "Admin endpoints": metric -> (type, label names)
DESIGN_METRICS = {
    "muxd_requests_total": ("counter", ("proto",)),
    "muxd_upstream_connections_opened_total": ("counter", ("proto",)),
    "muxd_upstream_connections": ("gauge", ("proto", "state")),
    "muxd_upstream_reuses_total": ("counter", ()),
    "muxd_upstream_retries_total": ("counter", ()),
    "muxd_pool_evictions_total": ("counter", ("reason",)),
    "muxd_client_connections": ("gauge", ()),
    "muxd_altsvc_entries": ("gauge", ()),
    "muxd_h3_fallbacks_total": ("counter", ()),
    "muxd_tls_leaf_issued_total": ("counter", ()),
}
PROTOS = {"h1", "h2", "h3", "tunnel"}

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE_RE = re.compile(rf"^({METRIC_NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*,?)?\}})? (\S+)(?: (-?\d+))?$")


def parse_prometheus(text):
    """A strict parser for the Prometheus text format (0.0.4) as muxd writes
    it: every family has HELP and TYPE before its samples, a family's samples
    are contiguous, labels are well formed, values numeric, no duplicate
    series.  Returns {name: {"type", "help", "samples": {labels-tuple: value}}}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families = {}
    current = None
    done = set()  # families whose sample block has ended
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}: {line!r}"
        assert line.strip(), f"empty line {n}"
        if line.startswith("#"):
            m = re.match(rf"^# (HELP|TYPE) ({METRIC_NAME}) (.*)$", line)
            if not m:
                assert not line.startswith(("# HELP", "# TYPE")), f"malformed {where}"
                continue  # a plain comment
            kind, name, rest = m.groups()
            fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            assert not fam["samples"], f"{kind} after samples of {name}: {where}"
            if kind == "HELP":
                assert fam["help"] is None, f"second HELP for {name}"
                assert rest.strip(), f"empty HELP for {name}"
                fam["help"] = rest
            else:
                assert fam["type"] is None, f"second TYPE for {name}"
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), where
                fam["type"] = rest
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"malformed sample {where}"
        name, value = m.group(1), m.group(7)
        labels = tuple(re.findall(LABEL, m.group(2) or ""))
        names = [k for k, _ in labels]
        assert len(names) == len(set(names)), f"repeated label {where}"
        fam = families.get(name)
        assert fam and fam["help"] is not None and fam["type"] is not None, f"sample before HELP/TYPE: {where}"
        if current != name:
            assert name not in done, f"samples of {name} are not contiguous"
            if current:
                done.add(current)
            current = name
        key = tuple(sorted(labels))
        assert key not in fam["samples"], f"duplicate series {where}"
        try:
            v = float(value)
        except ValueError:
            raise AssertionError(f"non-numeric value {where}")
        assert value in ("+Inf", "-Inf", "NaN") or not math.isnan(v), where
        if fam["type"] == "counter":
            assert v >= 0, f"negative counter {where}"
        fam["samples"][key] = v
    return families


def get_metrics(m):
    resp = m.admin("/metrics")
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("text/plain"), resp.headers
    return parse_prometheus(resp.text)


def value(families, name, **labels):
    return families[name]["samples"][tuple(sorted(labels.items()))]


def get_status(m):
    resp = m.admin("/status.json")
    assert resp.status == 200, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    return resp.json()


def fetch(m, url, n=1):
    for _ in range(n):
        r = curl(m.port, url, "-o", "/dev/null", "-w", "%{http_code}")
        assert r.stdout == b"200", r


def two_origins(m, nginx, origin, n_nginx=3, n_origin=2):
    (nginx.root / "a.txt").write_text("hello\n")
    o = origin()
    fetch(m, nginx.url("/a.txt"), n_nginx)
    fetch(m, o.url("/x"), n_origin)
    return o


def conns_idle(m, count):
    doc = get_status(m)
    conns = doc["connections"]
    if len(conns) == count and all(c["state"] == "idle" for c in conns):
        return doc
    return None


# --------------------------------------------------------------------------
# /metrics


def test_metrics_is_strict_prometheus_with_every_design_metric(muxd):
    m = muxd()
    fams = get_metrics(m)
    for name, (typ, label_names) in DESIGN_METRICS.items():
        assert name in fams, f"{name} missing"
        assert fams[name]["type"] == typ, name
        samples = fams[name]["samples"]
        assert samples, f"{name} has no samples"
        for labels in samples:
            assert tuple(sorted(k for k, _ in labels)) == tuple(sorted(label_names)), (name, labels)
    assert {dict(k)["proto"] for k in fams["muxd_requests_total"]["samples"]} == PROTOS
    assert {dict(k)["state"] for k in fams["muxd_upstream_connections"]["samples"]} == {"active", "idle"}
    assert {dict(k)["reason"] for k in fams["muxd_pool_evictions_total"]["samples"]} >= {"idle_timeout"}


def test_metrics_count_requests_and_reuses(muxd, nginx):
    m = muxd()
    (nginx.root / "a.txt").write_text("hello\n")
    n = 5
    fetch(m, nginx.url("/a.txt"), n)
    fams = get_metrics(m)
    assert value(fams, "muxd_requests_total", proto="h1") == n
    assert value(fams, "muxd_requests_total", proto="h2") == 0
    assert value(fams, "muxd_upstream_connections_opened_total", proto="h1") == 1
    assert value(fams, "muxd_upstream_reuses_total") == n - 1
    assert value(fams, "muxd_upstream_retries_total") == 0
    assert value(fams, "muxd_upstream_connections", proto="h1", state="idle") == 1
    assert value(fams, "muxd_upstream_connections", proto="h1", state="active") == 0
    assert value(fams, "muxd_client_connections") >= 1  # this very request
    wait_until(lambda: len(nginx.log_lines()) >= n, timeout=5, what="nginx access log")
    assert len(nginx.connections()) == 1


# --------------------------------------------------------------------------
# /status.json


def test_status_json_lists_connections_altsvc_and_counters(muxd, nginx, origin):
    m = muxd()
    o = two_origins(m, nginx, origin)
    doc = wait_until(lambda: conns_idle(m, 2), what="two idle connections")
    by_port = {c["port"]: c for c in doc["connections"]}
    assert set(by_port) == {nginx.port, o.port}
    for port, requests in ((nginx.port, 3), (o.port, 2)):
        c = by_port[port]
        assert c["host"] == LOCALHOST
        assert c["origin"] == f"{LOCALHOST}:{port}"
        assert c["proto"] == "h1"
        assert c["state"] == "idle"
        assert c["requests"] == requests
        assert c["streams"] == 0
        assert c["age_s"] >= c["idle_s"] >= 0
        assert f"{LOCALHOST}:{port}" in c["key"]
    assert isinstance(doc["altsvc"], list)
    counters = doc["counters"]
    assert counters["requests_total"] == {"h1": 5, "h2": 0, "h3": 0, "tunnel": 0}
    assert counters["upstream_connections_opened_total"]["h1"] == 2
    assert counters["upstream_reuses_total"] == 3
    assert counters["upstream_connections"]["h1"] == {"active": 0, "idle": 2}
    assert counters["altsvc_entries"] == len(doc["altsvc"])
    for key in ("upstream_retries_total", "pool_evictions_total", "client_connections",
                "h3_fallbacks_total", "tls_leaf_issued_total"):
        assert key in counters
    assert doc["clients"] >= 0  # not counting this request (test_env_trust.py)
    assert doc["uptime_s"] >= 0
    assert doc["draining"] is False
    assert doc["history"]["interval_s"] == 10
    for sample in doc["history"]["samples"]:  # empty until main.c calls admin_start
        assert sample["ago_s"] >= 0 and sample["requests"] <= 5 and sample["reuses"] <= 3


def test_status_keys_never_show_proxy_credentials(muxd, origin):
    """Through a parent proxy with credentials (the echo origin plays an HTTP
    parent: it answers the absolute-form requests), the pool key names the
    parent with a hash of the credentials, never the credentials."""
    parent = origin()
    m = muxd({"route *": {"proxy": f"http://alice:s3cr3t-pw@{LOCALHOST}:{parent.port}"}})
    fetch(m, "http://example.invalid/x")
    doc = wait_until(lambda: conns_idle(m, 1), what="an idle connection to the parent")
    key = doc["connections"][0]["key"]
    assert f"{LOCALHOST}:{parent.port}#" in key, key
    for page in ("/status.json", "/", "/metrics"):
        text = m.admin(page).text
        assert "s3cr3t-pw" not in text and "alice" not in text, page


# --------------------------------------------------------------------------
# the HTML page


def test_status_page_html(muxd, nginx, origin):
    m = muxd()
    o = two_origins(m, nginx, origin)
    wait_until(lambda: conns_idle(m, 2), what="two idle connections")
    resp = m.admin("/")
    assert resp.status == 200
    assert resp.headers.get("content-type", "").startswith("text/html")
    html = resp.text
    assert re.search(r'<meta http-equiv="refresh" content="5">', html)
    assert "<script" not in html and "http://" not in html.split("<body>")[0].replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    ), "no external assets"
    rows = re.findall(r'<tr class="conn">(.*?)</tr>', html)
    assert len(rows) == 2
    for port in (nginx.port, o.port):
        assert any(f"<td>{LOCALHOST}:{port}</td>" in r for r in rows), rows
    assert all("<td>h1</td>" in r and "<td>idle</td>" in r for r in rows)
    assert 'id="altsvc"' in html and 'id="counters"' in html
    for name in DESIGN_METRICS:
        assert f"<td>{name}</td>" in html
    head = m.admin("/")
    assert head.status == 200


def test_admin_methods_and_unknown_pages(muxd):
    m = muxd()
    assert m.admin("/no-such-page").status == 404
    r = curl(None, f"http://{LOCALHOST}:{m.port}/metrics", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"405"
    r = curl(None, f"http://{LOCALHOST}:{m.port}/status.json", "-I", "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"200"


def test_admin_pages_are_not_served_through_the_proxy(muxd):
    """An absolute-form request for muxd's own address comes back to muxd
    with its Via: a loop (508), never the admin page."""
    m = muxd()
    for path in ("/metrics", "/", "/status.json"):
        r = curl(m.port, f"http://{LOCALHOST}:{m.port}{path}", "-w", "\n%{http_code}")
        body, _, code = r.stdout.rpartition(b"\n")
        assert code == b"508", r
        assert b"muxd_requests_total" not in body and b"<table" not in body


# --------------------------------------------------------------------------
# the page in a real browser


def png_pixels(path):
    """(width, height, list of pixel tuples) of an 8-bit RGB/RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    width, height, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels = []
    for y in range(height):
        base = y * (stride + 1)
        ftype, line = raw[base], bytearray(raw[base + 1 : base + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [bytes(line[i : i + 3]) for i in range(0, stride, bpp)]
        prev = line
    return width, height, pixels


def chromium(tmp_path, *args):
    exe = shutil.which("chromium-browser") or require_tool("chromium", "chromium")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--no-proxy-server",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ] + list(args)
    env = clean_env()
    env["HOME"] = str(tmp_path)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=120)


def test_status_page_renders_in_headless_chromium(muxd, nginx, origin, tmp_path):
    m = muxd()
    o = two_origins(m, nginx, origin)
    wait_until(lambda: conns_idle(m, 2), what="two idle connections")
    url = f"http://{LOCALHOST}:{m.port}/"

    r = chromium(tmp_path, "--dump-dom", url)
    dom = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0 and "<table" in dom, r.stderr.decode(errors="replace")[-3000:]
    rows = re.findall(r'<tr class="conn">(.*?)</tr>', dom, re.S)
    assert len(rows) == 2, dom
    for port in (nginx.port, o.port):
        assert any(f"{LOCALHOST}:{port}" in row for row in rows)

    shot = tmp_path / "status.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,800", url)
    assert shot.exists(), r.stderr.decode(errors="replace")[-3000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1200, 800)
    distinct = set(pixels)
    background = max(distinct, key=pixels.count) if len(distinct) < 50 else None
    assert len(distinct) > 20, f"page looks blank: {len(distinct)} distinct colours"
    inked = sum(1 for p in pixels if p != (background or b"\xff\xff\xff"))
    assert inked > 2000, f"only {inked} non-background pixels"


# --------------------------------------------------------------------------
# muxd status


def status_command(conf_path):
    """argv for `muxd status -c CONF`."""
    return [MUXD_BIN, "status", "-c", str(conf_path)]


def write_status_conf(tmp_path, port):
    conf = tmp_path / "status.conf"
    conf.write_text(f"[muxd]\nlisten = {LOCALHOST}:{port}\n")
    return conf


def test_status_command_prints_the_pool(muxd, nginx, origin, tmp_path):
    m = muxd()
    o = two_origins(m, nginx, origin)
    wait_until(lambda: conns_idle(m, 2), what="two idle connections")
    cmd = status_command(write_status_conf(tmp_path, m.port))
    r = subprocess.run(cmd, capture_output=True, timeout=30, env=clean_env())
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ORIGIN"))
    assert lines[header].split() == ["ORIGIN", "PROTO", "STATE", "STREAMS", "REQUESTS", "IDLE"]
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        fields = line.split()
        rows[fields[0]] = fields
    assert set(rows) == {f"{LOCALHOST}:{nginx.port}", f"{LOCALHOST}:{o.port}"}
    assert rows[f"{LOCALHOST}:{nginx.port}"][1:5] == ["h1", "idle", "0", "3"]
    assert rows[f"{LOCALHOST}:{o.port}"][1:5] == ["h1", "idle", "0", "2"]
    # aligned: every column starts at the same offset on every row
    col = lines[header].index("PROTO")
    for line in lines[header + 1 : header + 3]:
        assert line[col - 2 : col] == "  " and line[col] != " "
    assert "Alt-Svc" in out


def test_status_command_fails_when_muxd_is_not_running(tmp_path):
    cmd = status_command(write_status_conf(tmp_path, closed_port()))
    r = subprocess.run(cmd, capture_output=True, timeout=30, env=clean_env())
    assert r.returncode == 1
    assert r.stdout == b""
    err = r.stderr.decode()
    assert "muxd status" in err and "refused" in err.lower(), err
    assert len(err.strip().splitlines()) == 1


# `muxd status` against a scripted muxd: the response is framed by the http1
# parser (Content-Length, chunked, interim heads), not by the close.

STATUS_DOC = json.dumps(
    {
        "uptime_s": 5,
        "clients": 0,
        "connections": [
            {"origin": "example.org:443", "proto": "h2", "state": "idle", "streams": 0, "requests": 7, "idle_s": 1}
        ],
        "altsvc": [],
    }
).encode()


def scripted_muxd(stream_server, writes, hold):
    """A stand-in muxd: reads the request head, sends each of `writes` in its
    own write, then keeps the connection open until the client closes it
    (hold) or closes it itself."""

    def handler(sock):
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return
            buf += data
        for w in writes:
            sock.sendall(w)
        if hold:
            recv_all(sock)

    return stream_server(handler)


def chunked(body, size):
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))


@pytest.mark.parametrize(
    "writes",
    [
        [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STATUS_DOC), STATUS_DOC],
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunked(STATUS_DOC, 7)[:50],
            chunked(STATUS_DOC, 7)[50:] + b"0\r\n\r\n",
        ],
    ],
    ids=["content-length", "interim-then-chunked"],
)
def test_status_command_ends_the_response_by_its_framing(stream_server, tmp_path, writes):
    """The peer keeps the connection open after the response: `muxd status`
    must not wait for the close (it did, then gave up after 10 s)."""
    srv = scripted_muxd(stream_server, writes, hold=True)
    cmd = status_command(write_status_conf(tmp_path, srv.port))
    r = subprocess.run(cmd, capture_output=True, timeout=30, env=clean_env())
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    row = next(line for line in out.splitlines() if line.startswith("example.org:443"))
    assert row.split()[1:5] == ["h2", "idle", "0", "7"]


@pytest.mark.parametrize(
    "writes, message",
    [
        ([b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}"], "malformed response head"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n"], "response too large"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}"], "truncated response"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], "malformed chunked body"),
        ([b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\n\r\nnot for you\r\n"], "answered 403 Forbidden: not for you"),
        ([b"SSH-2.0-OpenSSH_9.6\r\n"], "not an HTTP response"),
    ],
    ids=["bare-lf", "oversized", "truncated", "bad-chunk", "403", "not-http"],
)
def test_status_command_rejects_a_bad_response(stream_server, tmp_path, writes, message):
    srv = scripted_muxd(stream_server, writes, hold=message == "not an HTTP response")
    cmd = status_command(write_status_conf(tmp_path, srv.port))
    r = subprocess.run(cmd, capture_output=True, timeout=30, env=clean_env())
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"", (r.stdout, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("muxd status: "), err
    assert message in err, err
