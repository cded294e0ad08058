"""A response that breaks after muxd committed to its head (issue 18 item 6):
the head and the body bytes that arrived still reach the client, then the
connection ends without the rest of the body (no terminating chunk), so the
client can tell "processed, cut short" from "never processed" (zero bytes,
which a client may retry even for a non-idempotent request)."""

import socket
import struct

import pytest

from support import HTTPReader, IncompleteResponse, connect, curl, proxy_request

LENGTH_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Committed: yes\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Committed: yes\r\n\r\n"

# (id, what the origin sends before it breaks off, the body bytes in it)
BREAKS = [
    ("length-no-body", LENGTH_HEAD, b""),
    ("length-some-body", LENGTH_HEAD + b"a" * 300, b"a" * 300),
    ("chunked-no-body", CHUNKED_HEAD, b""),
    ("chunked-some-body", CHUNKED_HEAD + b"a\r\n0123456789\r\n", b"0123456789"),
    ("chunked-inside-chunk", CHUNKED_HEAD + b"64\r\n" + b"b" * 40, b"b" * 40),
]


def breaking_origin(sent, reset):
    def handler(req, conn):
        if reset:  # close with an RST instead of a FIN
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.send(sent)
        conn.close()

    return handler


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("sent,body", [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_head_reaches_client_then_cut(muxd, origin, sent, body, reset):
    o = origin(breaking_origin(sent, reset))
    m = muxd()
    with connect(m.port, timeout=15) as s:
        s.sendall(proxy_request("GET", o.url("/cut")))
        reader = HTTPReader(s)
        try:
            version, status, _, headers = reader.read_head()
        except IncompleteResponse as e:
            pytest.fail(f"the client got no response head before the connection ended: {e}")
        assert status == 200 and headers.get("x-committed") == "yes", headers
        got = bytearray()
        with pytest.raises(IncompleteResponse):
            for piece in reader.iter_body(headers, status):
                got += piece
        assert reader.eof, "muxd did not end the connection"
        assert bytes(got) == body[: len(got)], "the body bytes that arrived are not the origin's"


def test_curl_sees_partial_transfer_not_empty_reply(muxd, origin, tmp_path):
    o = origin(breaking_origin(LENGTH_HEAD + b"a" * 300, False))
    m = muxd()
    heads = tmp_path / "heads"
    r = curl(m.port, o.url("/cut"), "-o", "/dev/null", "-D", str(heads), timeout=15)
    # 18: "transfer closed with outstanding read data remaining"; 52 would be
    # "empty reply from server"
    assert r.returncode == 18, r
    assert heads.read_bytes().startswith(b"HTTP/1.1 200"), heads.read_bytes()
