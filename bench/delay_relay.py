#!/usr/bin/python3
"""A relay that adds a fixed delay each way, to fake a distant origin.

Forwards TCP connections accepted on 127.0.0.1:PORT to HOST:PORT; every
chunk of bytes (and the EOF) is passed on DELAY ms after it arrived, in
order, in both directions, so every round trip through the relay costs
2 * DELAY more than it would directly.  The kernel completes the client's
TCP handshake locally, so to charge it like a distant server would, the
relay starts forwarding a new connection only 2 * DELAY after accepting it
(the client's first bytes wait in the socket meanwhile).  With --udp,
datagrams to the same port number are forwarded too (one upstream socket per
client address), DELAY late each way.

    bench/delay_relay.py --listen PORT --target HOST:PORT --delay-ms 20 [--udp]
        [--bind 127.0.0.1]

Prints "relay listening on BIND:PORT" once ready; runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import collections
import signal
import socket
import sys

CHUNK = 65536
UDP_BUF = 8 << 20  # socket buffers of the UDP relay: a burst of a fast QUIC sender is not dropped here
UDP_IDLE = 60.0  # an upstream UDP socket with no traffic for this long is closed


async def pipe(reader, writer, delay):
    """Copy reader to writer, each chunk (and the EOF) delay seconds late.
    A queue keeps the order; reading goes on while earlier chunks wait, so
    throughput is not capped by the delay."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(sender())
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            await queue.put((loop.time() + delay, data or None))
            if not data:
                break
        await task
    except (ConnectionError, OSError):
        pass
    finally:
        if not task.done():
            task.cancel()


async def serve_tcp(client_reader, client_writer, target, delay):
    host, port = target
    handshake = asyncio.ensure_future(asyncio.sleep(2 * delay))  # SYN, SYN-ACK
    try:
        up_reader, up_writer = await asyncio.open_connection(host, port)
    except OSError:
        handshake.cancel()
        client_writer.close()
        return
    await handshake
    for w in (client_writer, up_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(pipe(client_reader, up_writer, delay), pipe(up_reader, client_writer, delay))
    finally:
        for w in (client_writer, up_writer):
            w.close()


class DelayLine:
    """Datagrams sent delay seconds after they arrived, in order: one timer
    for the oldest, not one per datagram (the relay must not be the
    bottleneck of a fast QUIC transfer)."""

    def __init__(self, delay, send):
        self.delay = delay
        self.send = send
        self.queue = collections.deque()
        self.timer = None

    def push(self, item):
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, item))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self.drain)

    def drain(self):
        loop = asyncio.get_running_loop()
        self.timer = None
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            self.send(*self.queue.popleft()[1])
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.drain)


def big_buffers(transport):
    sock = transport.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUF)
        except OSError:
            pass


class UDPUpstream(asyncio.DatagramProtocol):
    """The relay's socket towards the target for one client address."""

    def __init__(self, relay, client):
        self.relay = relay
        self.client = client
        self.transport = None
        self.last = 0.0
        self.line = DelayLine(relay.delay, relay.send_to_client)

    def connection_made(self, transport):
        self.transport = transport
        big_buffers(transport)

    def datagram_received(self, data, addr):
        self.last = asyncio.get_running_loop().time()
        self.line.push((data, self.client))

    def error_received(self, exc):
        pass


class UDPRelay(asyncio.DatagramProtocol):
    def __init__(self, target, delay):
        self.target = target
        self.delay = delay
        self.transport = None
        self.upstreams = {}
        self.line = DelayLine(delay, self.send_to_target)

    def connection_made(self, transport):
        self.transport = transport
        big_buffers(transport)

    def send_to_client(self, data, client):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, client)

    def datagram_received(self, data, addr):
        self.line.push((data, addr))

    def send_to_target(self, data, client):
        fut = self.upstreams.get(client)
        if fut is not None and fut.done() and not fut.cancelled():
            proto = fut.result()
            proto.last = asyncio.get_running_loop().time()
            if proto.transport and not proto.transport.is_closing():
                proto.transport.sendto(data)
        else:  # the first datagram from this client: open its upstream socket
            asyncio.ensure_future(self.forward(data, client))

    async def forward(self, data, client):
        up = self.upstreams.get(client)
        if up is None:
            up = self.upstreams[client] = asyncio.get_running_loop().create_future()
            try:
                _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: UDPUpstream(self, client), remote_addr=self.target)
            except OSError:
                del self.upstreams[client]
                up.cancel()
                return
            up.set_result(proto)
        proto = await up
        proto.last = asyncio.get_running_loop().time()
        if proto.transport and not proto.transport.is_closing():
            proto.transport.sendto(data)

    async def reap(self):
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UDP_IDLE / 4)
            for client, fut in list(self.upstreams.items()):
                if fut.done() and not fut.cancelled() and loop.time() - fut.result().last > UDP_IDLE:
                    fut.result().transport.close()
                    del self.upstreams[client]


def parse_target(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def main():
    ap = argparse.ArgumentParser(description="TCP (and UDP) relay adding a fixed delay each way")
    ap.add_argument("--listen", type=int, required=True, help="port to listen on (0 = ephemeral)")
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--target", type=parse_target, required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="delay added in each direction (ms)")
    ap.add_argument("--udp", action="store_true", help="forward UDP datagrams on the same port too")
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    loop = asyncio.get_running_loop()

    server = await asyncio.start_server(
        lambda r, w: serve_tcp(r, w, args.target, delay), args.bind, args.listen, backlog=512)
    port = server.sockets[0].getsockname()[1]
    udp_transport = None
    reaper = None
    if args.udp:
        relay = UDPRelay(args.target, delay)
        udp_transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(args.bind, port))
        reaper = asyncio.create_task(relay.reap())
    print(f"relay listening on {args.bind}:{port}" + (" (tcp+udp)" if args.udp else ""), flush=True)

    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()
    if udp_transport:
        udp_transport.close()
    if reaper:
        reaper.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
