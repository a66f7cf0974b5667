"""QUIC transport on 127.0.0.1: round trips, verification, close semantics, bad peers."""

from __future__ import annotations

import asyncio

import pytest

from wanspec.protocol.codec import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from wanspec.protocol.messages import Hello, Ping, SessionStart
from wanspec.transport.base import ConnectError, ConnectionClosed
from wanspec.transport.quic import CONTROL_STREAM, connect_quic, serve_quic


async def _serve(handler, certs):
    return await serve_quic("127.0.0.1", 0, handler, cert=certs.cert, key=certs.key)


def test_round_trip_with_ca_verification(arun, echo, all_messages, certs):
    async def main():
        server = await _serve(echo, certs)
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        try:
            conn = await connect_quic(host, port, ca=certs.ca_cert, timeout=5)
            for msg in all_messages:
                await conn.send(msg)
            got = [await conn.recv() for _ in all_messages]
            assert got == all_messages
            nbytes = sum(len(encode_frame(m)) for m in all_messages)
            assert conn.sent.messages == conn.received.messages == len(all_messages)
            assert conn.sent.bytes == conn.received.bytes == nbytes
            await conn.close()
            await conn.close()  # idempotent
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                await conn.send(Ping(t=0.0))
            with pytest.raises(ConnectionClosed):
                await conn.recv()
        finally:
            await server.close()

    arun(main())


def test_insecure_client_connects(arun, echo, certs):
    async def main():
        server = await _serve(echo, certs)
        try:
            conn = await connect_quic(*server.address, ca=None, insecure=True)
            await conn.send(Ping(t=1.0))
            assert await conn.recv() == Ping(t=1.0)
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_wrong_ca_fails_cleanly(arun, echo, certs, other_certs):
    async def main():
        server = await _serve(echo, certs)
        try:
            with pytest.raises(ConnectError, match="QUIC handshake with worker at 127.0.0.1:"):
                await connect_quic(*server.address, ca=other_certs.ca_cert, timeout=5)
        finally:
            await server.close()

    arun(main())


def test_wrong_server_name_fails_cleanly(arun, echo, certs):
    async def main():
        server = await _serve(echo, certs)
        try:
            with pytest.raises(ConnectError, match="does not cover the name .elsewhere.example.; "
                                                   ".*--host elsewhere.example"):
                await connect_quic(*server.address, ca=certs.ca_cert,
                                   server_name="elsewhere.example")
        finally:
            await server.close()

    arun(main())


def test_unreachable_server_fails_within_timeout(arun, closed_udp_port):
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConnectError, match="no answer within 0.3 s"):
            await connect_quic("127.0.0.1", closed_udp_port, insecure=True, timeout=0.3)
        assert loop.time() - t0 < 3.0

    arun(main(), timeout=5)


def test_server_may_speak_first_once_client_opened_stream(arun, certs):
    async def handler(conn):
        await conn.send(Hello(version=1, role="worker"))  # waits for the client's stream
        msg = await conn.recv()
        await conn.send(msg)

    async def main():
        server = await _serve(handler, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            await conn.send(Hello(version=1, role="controller"))
            assert await conn.recv() == Hello(version=1, role="worker")
            assert await conn.recv() == Hello(version=1, role="controller")
            with pytest.raises(ConnectionClosed):  # handler returned: server closed
                await conn.recv()
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                await conn.send(Ping(t=0.0))
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_client_close_delivers_pending_messages(arun, certs):
    got: list = []

    async def main():
        finished = asyncio.Event()

        async def handler(conn):
            try:
                while True:
                    got.append(await conn.recv())
            except ConnectionClosed:
                finished.set()

        server = await _serve(handler, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            for i in range(200):
                await conn.send(Ping(t=0.0, seq=i))
            await conn.close()
            await finished.wait()
            assert [m.seq for m in got] == list(range(200))
        finally:
            await server.close()

    arun(main())


def test_server_close_ends_open_connections(arun, echo, certs):
    async def main():
        server = await _serve(echo, certs)
        conn = await connect_quic(*server.address, ca=certs.ca_cert)
        await conn.send(Ping(t=0.0))
        assert await conn.recv() == Ping(t=0.0)
        await server.close()
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        await conn.close()

    arun(main())


def test_garbage_on_control_stream_is_a_protocol_error(arun, certs):
    async def main():
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handler(conn):
            seen = []
            try:
                while True:
                    seen.append(await conn.recv())
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.set_result((seen, exc, conn.closed))

        server = await _serve(handler, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            await conn.send(Ping(t=3.0))
            # bypass the codec: raw bytes on the control stream, as a wrong-protocol peer would
            conn._quic.send_stream_data(CONTROL_STREAM, b"GET / HTTP/1.1\r\n\r\n")
            conn._protocol.transmit()
            seen, exc, closed = await outcome
            assert seen == [Ping(t=3.0)]
            assert isinstance(exc, ProtocolError)
            assert closed
            with pytest.raises(ConnectionClosed, match="limit"):  # the server's reason travels
                await conn.recv()
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_oversize_send_refused_connection_stays_usable(arun, echo, certs):
    async def main():
        server = await _serve(echo, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert, max_frame=64)
            with pytest.raises(ProtocolError):
                await conn.send(Hello(version=1, role="controller", model="x" * 100))
            await conn.send(Ping(t=1.0))
            assert await conn.recv() == Ping(t=1.0)
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_many_clients_at_once(arun, echo, certs):
    async def client(i: int, address):
        conn = await connect_quic(*address, ca=certs.ca_cert)
        await conn.send(Ping(t=float(i), seq=i))
        assert await conn.recv() == Ping(t=float(i), seq=i)
        await conn.close()

    async def main():
        server = await _serve(echo, certs)
        try:
            await asyncio.gather(*(client(i, server.address) for i in range(8)))
        finally:
            await server.close()

    arun(main())


def test_frame_near_the_limit_crosses_flow_control_windows(arun, echo, certs):
    big = SessionStart(rid=1, prompt=(40000,) * 340_000)  # ~1 MB: more than one initial window
    assert 1_000_000 < len(encode_frame(big)) <= DEFAULT_MAX_FRAME

    async def main():
        server = await _serve(echo, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            await conn.send(big)
            assert await conn.recv() == big
            await conn.close()
        finally:
            await server.close()

    arun(main(), timeout=20)


@pytest.fixture
def short_idle(monkeypatch):
    """Shrink the idle timeout so keepalive and dead-peer detection can be seen in a second."""
    from wanspec.transport import quic

    monkeypatch.setattr(quic, "IDLE_TIMEOUT_S", 0.6)
    monkeypatch.setattr(quic, "KEEPALIVE_S", 0.2)


def test_keepalive_holds_a_quiet_connection_open(arun, echo, certs, short_idle):
    async def main():
        server = await _serve(echo, certs)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            await conn.send(Ping(t=0.0))
            assert await conn.recv() == Ping(t=0.0)
            await asyncio.sleep(1.5)  # well past the idle timeout, with no messages
            await conn.send(Ping(t=1.0))
            assert await conn.recv() == Ping(t=1.0)
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_silent_peer_death_detected_by_idle_timeout(arun, echo, certs, short_idle):
    async def main():
        server = await _serve(echo, certs)
        conn = await connect_quic(*server.address, ca=certs.ca_cert)
        await conn.send(Ping(t=0.0))
        assert await conn.recv() == Ping(t=0.0)
        # the worker vanishes (deaf and mute, no CONNECTION_CLOSE): like a pulled cable
        server._server.datagram_received = lambda data, addr: None
        server._server._transport.sendto = lambda data, addr=None: None
        with pytest.raises(ConnectionClosed, match="[Ii]dle"):
            await asyncio.wait_for(conn.recv(), 5.0)
        assert conn.closed
        await conn.close()
        await server.close()

    arun(main())
