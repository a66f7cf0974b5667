"""TCP and TCP+TLS transport on 127.0.0.1: round trips, failures, wrong-protocol peers."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from wanspec.errors import WanspecError
from wanspec.protocol.codec import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from wanspec.protocol.messages import Hello, Ping, SessionStart
from wanspec.transport.base import ConnectError, ConnectionClosed
from wanspec.transport.tcp import connect_tcp, serve_tcp
from wanspec.transport.tls import client_ssl_context, server_ssl_context


async def _round_trip(server_ssl=None, client_ssl=None, *, echo, messages):
    server = await serve_tcp("127.0.0.1", 0, echo, ssl=server_ssl)
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    try:
        conn = await connect_tcp(host, port, ssl=client_ssl, timeout=5)
        sock = conn._writer.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for msg in messages:
            await conn.send(msg)
        got = [await conn.recv() for _ in messages]
        assert got == messages
        assert conn.sent.messages == conn.received.messages == len(messages)
        assert conn.sent.bytes == conn.received.bytes == sum(len(encode_frame(m)) for m in messages)
        await conn.close()
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.send(Ping(t=0.0))
        with pytest.raises(ConnectionClosed):
            await conn.recv()
    finally:
        await server.close()


def test_plain_round_trip(arun, echo, all_messages):
    arun(_round_trip(echo=echo, messages=all_messages))


def test_tls_round_trip(arun, echo, all_messages, certs):
    arun(_round_trip(server_ssl_context(certs.cert, certs.key), client_ssl_context(certs.ca_cert),
                     echo=echo, messages=all_messages))


def test_tls_insecure_client_still_connects(arun, echo, all_messages, certs):
    arun(_round_trip(server_ssl_context(certs.cert, certs.key),
                     client_ssl_context(None, insecure=True), echo=echo, messages=all_messages))


def test_tls_wrong_ca_is_refused(arun, echo, certs, other_certs):
    async def main():
        ctx = server_ssl_context(certs.cert, certs.key)
        server = await serve_tcp("127.0.0.1", 0, echo, ssl=ctx)
        try:
            with pytest.raises(ConnectError, match="cannot trust worker"):
                await connect_tcp(*server.address, ssl=client_ssl_context(other_certs.ca_cert))
        finally:
            await server.close()

    arun(main())


def test_tls_client_to_plain_server_fails_cleanly(arun, echo, certs):
    async def main():
        server = await serve_tcp("127.0.0.1", 0, echo)
        try:
            with pytest.raises(ConnectError):
                await connect_tcp(*server.address, ssl=client_ssl_context(certs.ca_cert))
        finally:
            await server.close()

    arun(main())


def test_server_speaks_first_and_closes(arun):
    async def handler(conn):
        await conn.send(Hello(version=1, role="worker"))
        await conn.recv()  # then end the connection by returning

    async def main():
        server = await serve_tcp("127.0.0.1", 0, handler)
        try:
            conn = await connect_tcp(*server.address)
            assert await conn.recv() == Hello(version=1, role="worker")
            await conn.send(Ping(t=0.0))
            with pytest.raises(ConnectionClosed):
                await conn.recv()
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                await conn.send(Ping(t=0.0))
        finally:
            await server.close()

    arun(main())


def test_client_close_delivers_pending_messages(arun):
    got: list = []

    async def main():
        finished = asyncio.Event()

        async def handler(conn):
            try:
                while True:
                    got.append(await conn.recv())
            except ConnectionClosed:
                finished.set()

        server = await serve_tcp("127.0.0.1", 0, handler)
        try:
            conn = await connect_tcp(*server.address)
            for i in range(50):
                await conn.send(Ping(t=0.0, seq=i))
            await conn.close()
            await finished.wait()
            assert [m.seq for m in got] == list(range(50))
        finally:
            await server.close()

    arun(main())


def test_server_close_ends_open_connections(arun, echo):
    async def main():
        server = await serve_tcp("127.0.0.1", 0, echo)
        conn = await connect_tcp(*server.address)
        await conn.send(Ping(t=0.0))
        assert await conn.recv() == Ping(t=0.0)
        await server.close()
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        await conn.close()

    arun(main())


def test_connect_to_closed_port_fails_fast(arun, closed_tcp_port):
    async def main():
        with pytest.raises(ConnectError, match="connection refused") as info:
            await connect_tcp("127.0.0.1", closed_tcp_port, timeout=5)
        assert str(info.value) == (
            f"cannot reach worker at 127.0.0.1:{closed_tcp_port}: connection refused"
        )
        assert isinstance(info.value, WanspecError)

    arun(main(), timeout=5)


def _garbage_test(payload: bytes, *, expect_first=None):
    """A raw client sends ``payload``; the server's recv must raise ProtocolError and hang up."""

    async def main():
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handler(conn):
            seen = []
            try:
                while True:
                    seen.append(await conn.recv())
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.set_result((seen, exc, conn.closed))

        server = await serve_tcp("127.0.0.1", 0, handler)
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(payload)
            await writer.drain()
            seen, exc, closed = await outcome
            assert isinstance(exc, ProtocolError), exc
            assert closed
            assert seen == ([] if expect_first is None else [expect_first])
            assert await reader.read() == b""  # the server hung up: EOF, no hang
            writer.close()
        finally:
            await server.close()

    return main()


def test_http_garbage_closes_connection(arun):
    arun(_garbage_test(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))


def test_huge_frame_header_closes_connection(arun):
    arun(_garbage_test(struct.pack(">I", 2**31)))


def test_valid_frames_before_garbage_are_delivered(arun):
    arun(_garbage_test(encode_frame(Ping(t=2.0)) + b"\x00\x00\x00\x01\xc1",
                       expect_first=Ping(t=2.0)))


def test_oversize_send_refused_connection_stays_usable(arun, echo):
    async def main():
        server = await serve_tcp("127.0.0.1", 0, echo)
        try:
            conn = await connect_tcp(*server.address, max_frame=64)
            with pytest.raises(ProtocolError):
                await conn.send(Hello(version=1, role="controller", model="x" * 100))
            await conn.send(Ping(t=1.0))
            assert await conn.recv() == Ping(t=1.0)
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_listen_on_busy_port_is_a_clear_error(arun, echo):
    async def main():
        server = await serve_tcp("127.0.0.1", 0, echo)
        try:
            with pytest.raises(ConnectError, match="cannot listen on 127.0.0.1:"):
                await serve_tcp(*server.address, echo)
        finally:
            await server.close()

    arun(main())


def test_frame_near_the_limit_round_trips(arun, echo):
    big = SessionStart(rid=1, prompt=(40000,) * 340_000)
    assert 1_000_000 < len(encode_frame(big)) <= DEFAULT_MAX_FRAME

    async def main():
        server = await serve_tcp("127.0.0.1", 0, echo)
        try:
            conn = await connect_tcp(*server.address)
            await conn.send(big)
            assert await conn.recv() == big
            await conn.close()
        finally:
            await server.close()

    arun(main(), timeout=20)
