"""A real gRPC round trip through muxd's interception (issue 14 item 2):
a python3-grpcio server with TLS as the origin and a grpcio client that
reaches it through muxd (grpc.http_proxy, muxd's CA as its root): HTTP/2 to
the client (gRPC insists on ALPN h2), HTTP/2 upstream, the status and the
trailing metadata in trailers both ways. Unary and server-streaming calls.
"""

from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc")

from support import LOCALHOST  # noqa: E402


def intercept_conf(pki, port):
    return {"intercept": {"ports": port}, "route *": {"ca_file": pki.ca_cert}}


def identity(b):
    return b


class Service(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method == "/muxd.Test/Echo":
            return grpc.unary_unary_rpc_method_handler(self.echo, identity, identity)
        if details.method == "/muxd.Test/Count":
            return grpc.unary_stream_rpc_method_handler(self.count, identity, identity)
        if details.method == "/muxd.Test/Fail":
            return grpc.unary_unary_rpc_method_handler(self.fail, identity, identity)
        return None

    def echo(self, request, context):
        md = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-echo-trailer", md.get("x-client", "")),))
        return b"echo:" + request

    def count(self, request, context):
        n = int(request)
        for i in range(n):
            yield str(i).encode() * 100
        context.set_trailing_metadata((("x-count", str(n)),))

    def fail(self, request, context):
        context.set_trailing_metadata((("x-why", "asked"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "you asked for it")


@pytest.fixture
def grpc_origin(pki):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Service(),))
    creds = grpc.ssl_server_credentials(
        [(pki.leaf_key.read_bytes(), pki.leaf_cert.read_bytes())])
    port = server.add_secure_port(f"{LOCALHOST}:0", creds)
    assert port, "grpc server could not bind"
    server.start()
    yield port
    server.stop(0)


def channel(m, port):
    creds = grpc.ssl_channel_credentials(root_certificates=(m.state_dir / "ca.pem").read_bytes())
    return grpc.secure_channel(f"localhost:{port}", creds,
                               options=[("grpc.http_proxy", f"http://{LOCALHOST}:{m.port}"),
                                        ("grpc.enable_retries", 0)])


def test_grpc_unary_and_server_streaming_through_interception(muxd, pki, grpc_origin):
    m = muxd(intercept_conf(pki, grpc_origin))
    with channel(m, grpc_origin) as ch:
        echo = ch.unary_unary("/muxd.Test/Echo")
        reply, call = echo.with_call(b"hi", metadata=(("x-client", "c1"),), timeout=20)
        assert reply == b"echo:hi"
        assert call.code() == grpc.StatusCode.OK
        assert ("x-echo-trailer", "c1") in call.trailing_metadata()

        count = ch.unary_stream("/muxd.Test/Count")
        call = count(b"50", timeout=20)
        got = list(call)
        assert got == [str(i).encode() * 100 for i in range(50)]
        assert call.code() == grpc.StatusCode.OK
        assert ("x-count", "50") in call.trailing_metadata()

        fail = ch.unary_unary("/muxd.Test/Fail")
        with pytest.raises(grpc.RpcError) as e:
            fail(b"", timeout=20)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "you asked for it"
        assert ("x-why", "asked") in e.value.trailing_metadata()
    assert m.metrics().value("muxd_client_h2_sessions_total") == 1
    assert m.metrics().value("muxd_requests_total", proto="h2") == 3
