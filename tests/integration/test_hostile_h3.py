"""Hostile HTTP/3 origins (issue 16 items 1 and 4, h3 column), scripted by
tests/h3origin/h3origin.c."""

from h3origin import h3_only_muxd
from support import curl


def get(m, o, path, *args, timeout=20):
    out = curl(m.port, f"https://localhost:{o.port}{path}", "--cacert", str(m.state_dir / "ca.pem"),
               "-w", "\n%{http_code}", *args, timeout=timeout)
    body, _, code = out.stdout.rpartition(b"\n")
    return code.decode(), body


def test_smoke(muxd, h3_origin, pki):
    o = h3_origin()
    m = h3_only_muxd(muxd, pki, o)
    assert get(m, o, "/") == ("200", b"ok")
    assert o.requests() == [(1, "GET", "/")]
    for p in ("/status/204", "/status/304", "/interim?n=3", "/bigheader?kib=8", "/reset"):
        print(p, get(m, o, p, "-i"))
    print(get(m, o, "/echo", "--data-binary", "hello", "-H", "Expect: 100-continue"))
    print(get(m, o, "/echo", "-I"))
    print(o.log())
    assert 0
