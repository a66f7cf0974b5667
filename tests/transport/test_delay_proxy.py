"""The delay proxy: a round trip between processes on one machine, in order, bounded.

Timing is only checked from below (a proxy can never be faster than its delay; a loaded host
may make it slower), so these tests do not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner

from wanspec.cli.app import app
from wanspec.protocol.messages import Ping
from wanspec.transport.delay_proxy import Delay, TcpDelayProxy, UdpDelayProxy
from wanspec.transport.factory import connect, serve

RTT_S = 0.08


async def _echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_delay_from_rtt_and_its_bounds():
    assert Delay.from_rtt_ms(30, 4) == Delay(0.015, 0.004)
    with pytest.raises(ValueError):
        Delay(-0.001)
    with pytest.raises(ValueError):
        Delay(0.01, jitter_s=61)


def test_tcp_adds_the_round_trip_and_keeps_every_byte_in_order(arun):
    async def main():
        server, port = await _echo_server()
        async with TcpDelayProxy(("127.0.0.1", port), Delay(RTT_S / 2, 0.01), seed=3) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            t0 = time.perf_counter()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert time.perf_counter() - t0 >= RTT_S
            # many small writes with jitter: the stream still arrives whole and in order
            sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
            for k in range(0, len(sent), 100):
                writer.write(sent[k:k + 100])
                await asyncio.sleep(0)
            assert await reader.readexactly(len(sent)) == sent
            writer.write_eof()  # a close travels too: the echo server closes, we see EOF
            assert await reader.read() == b""
            writer.close()
            assert proxy.connections == 1
        server.close()

    arun(main())


def test_tcp_to_an_unreachable_upstream_closes_the_client(arun):
    async def main():
        server, port = await _echo_server()
        server.close()
        await server.wait_closed()  # nothing listens there now
        async with TcpDelayProxy(("127.0.0.1", port), Delay(0.001)) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    arun(main())


def test_udp_adds_the_round_trip_per_client(arun):
    async def main():
        loop = asyncio.get_running_loop()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data, addr)

        echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        port = echo.get_extra_info("sockname")[1]
        async with UdpDelayProxy(("127.0.0.1", port), Delay(RTT_S / 2)) as proxy:
            got: list[asyncio.Queue[bytes]] = [asyncio.Queue(), asyncio.Queue()]

            class Client(asyncio.DatagramProtocol):
                def __init__(self, q):
                    self.q = q

                def datagram_received(self, data, addr):
                    self.q.put_nowait(data)

            clients = [(await loop.create_datagram_endpoint(
                lambda q=q: Client(q), remote_addr=("127.0.0.1", proxy.port)))[0] for q in got]
            t0 = time.perf_counter()
            for i, c in enumerate(clients):
                for k in range(5):
                    c.sendto(bytes([i, k]))
            for i, q in enumerate(got):  # each client gets its own answers, in order
                assert [await asyncio.wait_for(q.get(), 5) for _ in range(5)] == [
                    bytes([i, k]) for k in range(5)]
            assert time.perf_counter() - t0 >= RTT_S
            for c in clients:
                c.close()
        echo.close()

    arun(main())


def test_udp_with_jitter_never_reorders(arun):
    async def main():
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait(data)

        sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        port = sink.get_extra_info("sockname")[1]
        async with UdpDelayProxy(("127.0.0.1", port), Delay(0.005, 0.02), seed=1) as proxy:
            client, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", proxy.port))
            for i in range(200):
                client.sendto(i.to_bytes(2, "big"))
                if i % 20 == 0:
                    await asyncio.sleep(0.001)
            received = [int.from_bytes(await asyncio.wait_for(got.get(), 5), "big")
                        for _ in range(200)]
            assert received == list(range(200))
            client.close()
        sink.close()

    arun(main())


def test_tcp_reset_closes_the_other_side(arun):
    """A side that resets (a crashed process) ends the connection: the other side sees EOF."""
    async def main():
        accepted: asyncio.Queue = asyncio.Queue()

        async def keep(reader, writer):
            accepted.put_nowait((reader, writer))

        server = await asyncio.start_server(keep, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with TcpDelayProxy(("127.0.0.1", port), Delay(0.01)) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            up_reader, up_writer = await asyncio.wait_for(accepted.get(), 5)
            sock = up_writer.get_extra_info("socket")
            import socket
            import struct

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            up_writer.close()  # an RST, not a FIN
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        server.close()

    arun(main())


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_wanspec_transports_cross_it(arun, echo, certs, kind):
    """The worker's transports work through the proxy, TCP and QUIC (over UDP), with its RTT."""
    async def main():
        tls = {"cert": certs.cert, "key": certs.key} if kind == "quic" else {}
        server = await serve(kind, "127.0.0.1:0", echo, **tls)
        proxy_cls = UdpDelayProxy if kind == "quic" else TcpDelayProxy
        try:
            async with proxy_cls(server.address, Delay(RTT_S / 2)) as proxy:
                client_tls = {"ca": certs.ca_cert} if kind == "quic" else {}
                conn = await connect(kind, f"127.0.0.1:{proxy.port}", timeout=5,
                                     server_name="localhost", **client_tls)
                t0 = time.perf_counter()
                await conn.send(Ping(t=1.0, seq=7))
                assert await conn.recv() == Ping(t=1.0, seq=7)
                assert time.perf_counter() - t0 >= RTT_S
                await conn.close()
        finally:
            await server.close()

    arun(main(), timeout=20)


@pytest.mark.parametrize("args,needle", [
    (["--listen", "127.0.0.1:7", "--to", "127.0.0.1:7", "--rtt", "5"], "same address"),
    (["--listen", "127.0.0.1", "--to", "127.0.0.1:7", "--rtt", "5"], "has no port"),
    (["--listen", "127.0.0.1:0", "--to", "127.0.0.1:7", "--rtt", "-1"], "--rtt must be"),
    (["--listen", "127.0.0.1:0", "--to", "127.0.0.1:7", "--rtt", "5", "--jitter", "90s"],
     "--jitter must be"),
])
def test_cli_flags_are_checked(args, needle):
    r = CliRunner().invoke(app, ["delay-proxy", *args])
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.stderr.split())


def test_closing_with_live_connections_is_quiet(arun, caplog):
    """Stopping the proxy (Ctrl-C) while connections are open ends them without asyncio
    logging an error."""
    async def main():
        server, port = await _echo_server()
        proxy = await TcpDelayProxy(("127.0.0.1", port), Delay(0.01)).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await proxy.close()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        server.close()
        await asyncio.sleep(0.05)

    with caplog.at_level("ERROR", logger="asyncio"):
        arun(main())
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
