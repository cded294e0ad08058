"""TLS session resumption that survives a restart ([pool] session_file) and
0-RTT early data for safe requests ([route] early_data).

The origin is nginx; what it saw comes back in the body of its answer:
$ssl_session_reused ("r" for a resumed handshake, "." for a full one),
$ssl_early_data ("1" when the request arrived in TLS 1.3 early data) and the
request's Early-Data field (RFC 8470).  muxd is restarted on the same state
directory in between, so the only way to resume is the session file."""

import os
import signal
import stat

import pytest

from support import HTTPReader, connect, proxy_request, wait_until

# what nginx saw, as the body of every answer
SHOW = 'location / { return 200 "reused=$ssl_session_reused early=$ssl_early_data hdr=$http_early_data\\n"; }'
# RFC 8470: nginx asks for a request that came as early data to come again
TOO_EARLY = 'location / { if ($http_early_data) { return 425; } ' + SHOW[len("location / { "):]


def https_request(m, method, url, body=None, timeout=10):
    with connect(m.port, timeout=timeout) as s:
        s.sendall(proxy_request(method, url, body=body))
        return HTTPReader(s).read_response()


def seen(resp):
    """The fields of nginx's answer: {"reused": "r", "early": "1", "hdr": "1"}."""
    assert resp.status == 200, resp
    return dict(part.split("=", 1) for part in resp.text.split())


def session_file(m):
    return m.state_dir / "sessions.cache"


def restart(m):
    """SIGTERM (the session file is written at shutdown), then start again on
    the same state directory."""
    assert m.stop() == 0, m.log()
    return m.start()


def conf(pki, pool=None, route=None):
    c = {"route *": dict({"ca_file": pki.ca_cert}, **(route or {}))}
    if pool:
        c["pool"] = pool
    return c


@pytest.mark.parametrize("protocol", ["TLSv1.2", "TLSv1.3"])
def test_session_resumed_after_restart(muxd, tls_nginx_factory, pki, protocol):
    ng = tls_nginx_factory(protocols=protocol, extra=SHOW)
    m = muxd(conf(pki), args=["-v"])
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "."
    restart(m)
    path = session_file(m)
    assert path.exists(), "no session file after the shutdown"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "r", (
        "the first connection after the restart was a full handshake")


def test_session_file_written_soon_after_a_new_session(muxd, nginx_tls, pki):
    """Off the hot path, but soon: the file appears a few seconds after the
    first session, with no shutdown (a crash keeps it)."""
    m = muxd(conf(pki))
    assert https_request(m, "GET", nginx_tls.url("/")).status in (200, 403, 404)
    wait_until(lambda: session_file(m).exists(), timeout=10, what="the session file")
    assert stat.S_IMODE(os.stat(session_file(m)).st_mode) == 0o600


def test_session_file_off_means_full_handshake_after_restart(muxd, tls_nginx_factory, pki):
    ng = tls_nginx_factory(extra=SHOW)
    m = muxd(conf(pki, pool={"session_file": "off"}))
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "."
    restart(m)
    assert not session_file(m).exists()
    assert list(m.state_dir.glob("sessions*")) == []
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "."


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_session_file_is_ignored_with_a_warning(muxd, tls_nginx_factory, pki, damage):
    ng = tls_nginx_factory(extra=SHOW)
    m = muxd(conf(pki))
    https_request(m, "GET", ng.url("/"))
    assert m.stop() == 0
    path = session_file(m)
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xffnot a session file\n" * 50)
    else:
        path.write_bytes(good[: len(good) // 2])
    m.start()
    wait_until(lambda: "ignoring the session file" in m.log(), timeout=5, what="the warning")
    assert m.log().count("ignoring the session file") == 1
    # the damaged file is not used: a full handshake, and muxd works
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "."
    restart(m)
    assert path.read_bytes().startswith(b"muxd-tls-sessions 2\n"), "the file was not rewritten"
    assert seen(https_request(m, "GET", ng.url("/")))["reused"] == "r"


# --------------------------------------------------------------------------
# 0-RTT


def early_nginx(tls_nginx_factory, extra=SHOW):
    return tls_nginx_factory(protocols="TLSv1.3", extra="ssl_early_data on;\n" + extra)


def test_get_after_restart_goes_as_early_data(muxd, tls_nginx_factory, pki):
    ng = early_nginx(tls_nginx_factory)
    m = muxd(conf(pki), args=["-v"])
    first = seen(https_request(m, "GET", ng.url("/")))
    assert first["reused"] == "." and first["early"] == "", first
    # nginx's $ssl_early_data is "1" only while its side of the handshake is
    # still running when it reads the request; on a loaded machine the
    # client's Finished may be in by then. What muxd sends early is marked
    # (Early-Data: 1) and the server's acceptance is logged, every time.
    nginx_says = []
    for _ in range(3):
        restart(m)
        got = seen(https_request(m, "GET", ng.url("/")))
        assert got["reused"] == "r" and got["hdr"] == "1", got
        assert "bytes of early data accepted" in m.log()
        nginx_says.append(got["early"])
        if got["early"] == "1":
            break
    assert "1" in nginx_says, f"nginx never saw the request as early data: {nginx_says}"
    # once each: accepted early data is not sent again after the handshake
    m.stop()
    wait_until(lambda: len(ng.log_lines()) >= 1 + len(nginx_says), timeout=5, what="nginx access log")
    assert len(ng.log_lines()) == 1 + len(nginx_says), ng.log_lines()


def test_post_and_route_off_do_not_use_early_data(muxd, tls_nginx_factory, pki):
    ng = early_nginx(tls_nginx_factory)
    m = muxd(conf(pki))
    https_request(m, "GET", ng.url("/"))
    restart(m)
    # a request with a body is not replay-safe: after the handshake
    got = seen(https_request(m, "POST", ng.url("/"), body=b"x=1"))
    assert got["reused"] == "r" and got["early"] == "" and got["hdr"] == "", got
    # early_data = off: resumed, but nothing early
    m.stop()
    m.write_conf(conf(pki, route={"early_data": "off"}))
    m.start()
    got = seen(https_request(m, "GET", ng.url("/")))
    assert got["early"] == "" and got["hdr"] == "", got


def test_425_is_retried_without_early_data(muxd, tls_nginx_factory, pki):
    ng = early_nginx(tls_nginx_factory, extra=TOO_EARLY)
    m = muxd(conf(pki), args=["-v"])
    https_request(m, "GET", ng.url("/"))
    restart(m)
    resp = https_request(m, "GET", ng.url("/"))
    got = seen(resp)
    assert got["early"] == "" and got["hdr"] == "", got
    wait_until(lambda: len(ng.log_lines()) >= 3, timeout=5, what="nginx access log")
    statuses = [line[2].split('"')[-1].split()[0] for line in ng.log_lines()]
    assert statuses[-2:] == ["425", "200"], statuses
    assert "without early data (425)" in m.log()


def test_refused_early_data_is_sent_again_after_the_handshake(muxd, tls_nginx_factory, pki):
    """nginx reloaded: new ticket keys, so the ticket is refused, and with it
    the early data; the request still gets its answer (a full handshake)."""
    ng = early_nginx(tls_nginx_factory)
    m = muxd(conf(pki), args=["-v"])
    https_request(m, "GET", ng.url("/"))
    restart(m)
    reloads = ng.error_log.read_text().count("reconfiguring")
    os.kill(ng.proc.pid, signal.SIGHUP)
    wait_until(lambda: ng.error_log.read_text().count("reconfiguring") > reloads, timeout=10,
               what="nginx to reload")
    wait_until(lambda: ng.error_log.read_text().count("gracefully shutting down") > reloads,
               timeout=10, what="the old nginx worker to stop")
    got = seen(https_request(m, "GET", ng.url("/")))
    assert got["reused"] == "." and got["early"] == "", got
    assert "refused: sent again" in m.log()


def test_h2_get_after_restart_goes_as_early_data(muxd, tls_nginx_factory, pki):
    """HTTP/2 over a resumed TLS 1.3 session: the preface, SETTINGS and the
    GET's HEADERS go as early data without waiting for the server's
    SETTINGS, marked Early-Data: 1; nginx answers over h2."""
    ng = tls_nginx_factory(protocols="TLSv1.3", http2=True,
                           extra="ssl_early_data on;\n" + SHOW.replace('early_data\\n', 'early_data proto=$server_protocol\\n'))
    m = muxd(conf(pki), args=["-v"])
    first = seen(https_request(m, "GET", ng.url("/")))
    assert first["reused"] == "." and first["proto"] == "HTTP/2.0", first
    nginx_says = []
    for _ in range(3):
        restart(m)
        got = seen(https_request(m, "GET", ng.url("/")))
        assert got["reused"] == "r" and got["hdr"] == "1" and got["proto"] == "HTTP/2.0", got
        assert "bytes of early data accepted" in m.log()
        nginx_says.append(got["early"])
        if got["early"] == "1":
            break
    assert "1" in nginx_says, f"nginx never saw the request as early data: {nginx_says}"


def test_h2_post_waits_for_the_handshake(muxd, tls_nginx_factory, pki):
    """A POST on a connection that starts with 0-RTT is not early data."""
    ng = tls_nginx_factory(protocols="TLSv1.3", http2=True, extra="ssl_early_data on;\n" + SHOW)
    m = muxd(conf(pki), args=["-v"])
    seen(https_request(m, "GET", ng.url("/")))
    restart(m)
    got = seen(https_request(m, "POST", ng.url("/"), body=b"x"))
    assert got["reused"] == "r" and got["early"] == "" and got["hdr"] == "", got


# --------------------------------------------------------------------------
# QUIC


def test_quic_session_resumed_after_restart(muxd, tls_nginx_factory, h3_server, pki):
    """The QUIC handshake's ticket (kept apart from TCP's, under "h3|" and the
    pool key) is in the file too: after a restart the first QUIC connection
    to gtlsserver resumes (GnuTLS on muxd's side says so)."""
    from test_h3 import altsvc_origin, h3_conf, which

    ng, q = altsvc_origin(tls_nginx_factory, h3_server, keepalive=False)
    m = muxd(h3_conf(pki, ng.port), args=["-v"])
    assert which(m, ng) == "tcp"
    assert which(m, ng) == "quic"
    assert ", resumed" not in m.log()
    restart(m)
    keys = [bytes.fromhex(line.split()[3]) for line in session_file(m).read_text().splitlines()[1:]]
    assert any(k.startswith(b"h3|") for k in keys), keys
    assert which(m, ng) == "quic"
    wait_until(lambda: "quic: handshake done with" in m.log(), timeout=5, what="the QUIC handshake")
    assert ", resumed" in m.log(), "the first QUIC connection after the restart was a full handshake"


def quic_restart_origin(muxd, tls_nginx_factory, h3_server, pki, **route):
    """A QUIC origin muxd knows, and muxd restarted: the session file holds
    the QUIC ticket with the server's transport parameters.  gtlsserver logs
    the packets it receives."""
    from test_h3 import altsvc_origin, h3_conf, which

    ng, q = altsvc_origin(tls_nginx_factory, h3_server, keepalive=False)
    q.stop()  # again, logging packets (same port: the Alt-Svc stays right)
    q.quiet = False
    q.start()
    m = muxd(h3_conf(pki, ng.port, **({"route *": route} if route else {})), args=["-v"])
    assert which(m, ng) == "tcp"
    assert which(m, ng) == "quic"
    wait_until(lambda: session_file(m).exists() and b"h3|" in b"".join(
        bytes.fromhex(line.split()[3]) for line in session_file(m).read_text().splitlines()[1:]),
        timeout=10, what="the QUIC ticket in the session file")
    restart(m)
    lines = session_file(m).read_text().splitlines()
    assert lines[0] == "muxd-tls-sessions 2", lines[0]
    quic = [line.split() for line in lines[1:] if bytes.fromhex(line.split()[3]).startswith(b"h3|")]
    assert quic and quic[0][5] != "-", "the QUIC ticket was stored without the transport parameters"
    return m, ng, q


def test_quic_get_after_restart_goes_as_0rtt(muxd, tls_nginx_factory, h3_server, pki):
    """After a restart the first QUIC connection resumes with 0-RTT: the GET
    goes before the handshake completes and gtlsserver takes it."""
    from test_h3 import which

    m, ng, q = quic_restart_origin(muxd, tls_nginx_factory, h3_server, pki)
    assert which(m, ng) == "quic"
    wait_until(lambda: "quic: 0-RTT to" in m.log(), timeout=5, what="the 0-RTT verdict")
    assert "(resuming, 0-RTT)" in m.log()
    assert "0-RTT: safe requests go before the handshake" in m.log()
    assert "quic: 0-RTT to localhost:%d accepted" % q.port in m.log(), m.log()[-3000:]
    # the request itself rode a 0-RTT packet
    assert "type=0RTT" in q.log_path.read_text(errors="replace"), "gtlsserver received no 0-RTT packet"


def test_quic_refused_0rtt_is_sent_again(muxd, tls_nginx_factory, h3_server, pki):
    """A gtlsserver restarted in between has new ticket keys: it refuses the
    0-RTT (a full handshake); the GET is sent again on the new HTTP/3
    session and still answers."""
    from test_h3 import which

    m, ng, q = quic_restart_origin(muxd, tls_nginx_factory, h3_server, pki)
    q.stop()
    q.start()
    assert which(m, ng) == "quic"
    assert "(resuming, 0-RTT)" in m.log()
    assert "quic: 0-RTT to localhost:%d refused: streams sent again" % q.port in m.log(), m.log()[-3000:]


def test_quic_route_early_data_off_means_no_0rtt(muxd, tls_nginx_factory, h3_server, pki):
    from test_h3 import which

    m, ng, q = quic_restart_origin(muxd, tls_nginx_factory, h3_server, pki, early_data="off")
    assert which(m, ng) == "quic"
    wait_until(lambda: ", resumed" in m.log(), timeout=5, what="the resumed QUIC handshake")
    assert "0-RTT" not in m.log()
    assert "type=0RTT" not in q.log_path.read_text(errors="replace")


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_quic_0rtt_that_never_completes_falls_back_to_tcp(muxd, tls_nginx_factory, h3_server, pki, how):
    """The QUIC server is gone after the restart (its port refuses, or it
    drops every packet): the requests that 0-RTT took before the handshake
    go over TCP instead, the client never notices, and the alternative is
    marked broken.  A silent server costs at most 10 x h3_timeout."""
    from test_h3 import which

    m, ng, q = quic_restart_origin(muxd, tls_nginx_factory, h3_server, pki)
    if how == "silent":
        m.stop()
        q.stop()
        q.options = ["--rx-loss=1.0"]
        q.start()
        m.start()
    else:
        q.stop()
    assert which(m, ng, timeout=20) == "tcp"
    assert "(resuming, 0-RTT)" in m.log()
    wait_until(lambda: "using TCP" in m.log(), timeout=5, what="the fallback")
    if how == "silent":
        assert "(0-RTT) not done within" in m.log(), m.log()[-3000:]
