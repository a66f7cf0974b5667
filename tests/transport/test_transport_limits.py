"""What a peer can make a TCP or QUIC endpoint hold is bounded in size and in time.

A half-sent frame must be completed within the frame timeout (a peer trickling one is dropped and
its bytes freed), a peer that does not read what we send is dropped instead of piling it up, a
fast sender is held back (TCP) or dropped (QUIC) instead of growing the inbox, and closing a QUIC
connection to a dead peer takes a bounded time.
"""

from __future__ import annotations

import asyncio
import struct
import time
import tracemalloc

import pytest

from wanspec.protocol.codec import DEFAULT_MAX_FRAME, ProtocolError, encode_frame
from wanspec.protocol.messages import Drafts, Ping
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.common import MAX_QUEUED_MESSAGES
from wanspec.transport.quic import CONTROL_STREAM, LINGER_S, connect_quic, serve_quic
from wanspec.transport.tcp import serve_tcp

TIMEOUT = 0.3  # the frame timeout of these tests (seconds)


def _recording_handler(outcome: asyncio.Future, conns: list):
    async def handler(conn):
        conns.append(conn)
        seen = []
        try:
            while True:
                seen.append(await conn.recv())
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            if not outcome.done():
                outcome.set_result((seen, exc))
    return handler


# ---- TCP -----------------------------------------------------------------------------------------


def test_tcp_trickled_half_frame_is_dropped_and_freed(arun):
    async def main():
        loop = asyncio.get_running_loop()
        outcome, conns = loop.create_future(), []
        server = await serve_tcp("127.0.0.1", 0, _recording_handler(outcome, conns),
                                 frame_timeout=TIMEOUT)
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(encode_frame(Ping(1.0)))
            writer.write(struct.pack(">I", 1000) + b"\x95")  # a frame begins ...
            await writer.drain()
            started = time.monotonic()
            for _ in range(20):  # ... and trickles on, a byte at a time, never finishing
                if outcome.done():
                    break
                writer.write(b"\x00")
                await writer.drain()
                await asyncio.sleep(TIMEOUT / 6)
            seen, exc = await asyncio.wait_for(outcome, 5)
            elapsed = time.monotonic() - started
            assert seen == [Ping(1.0)]
            assert isinstance(exc, ProtocolError) and "bytes of a frame" in str(exc)
            assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 2.0
            assert conns[0]._decoder.buffered == 0
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and we were disconnected
            writer.close()
        finally:
            await server.close()

    arun(main())


def test_tcp_many_half_frames_are_freed_after_the_timeout(arun):
    """Connections each holding half a 1 MiB frame: the memory comes back after the deadline
    (measured with tracemalloc, not RSS)."""
    n, half = 8, DEFAULT_MAX_FRAME // 2

    async def main():
        async def handler(conn):
            with pytest.raises(ProtocolError):
                while True:
                    await conn.recv()

        server = await serve_tcp("127.0.0.1", 0, handler, frame_timeout=1.0)
        writers = []
        try:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                _, w = await asyncio.open_connection(*server.address)
                w.write(struct.pack(">I", DEFAULT_MAX_FRAME) + b"\x00" * half)
                writers.append(w)
            await asyncio.gather(*(w.drain() for w in writers))
            await asyncio.sleep(0.5)  # read by the server, not yet late
            held = tracemalloc.get_traced_memory()[0] - base
            await asyncio.sleep(1.5)  # past the deadline: dropped
            after = tracemalloc.get_traced_memory()[0] - base
            return held, after
        finally:
            tracemalloc.stop()
            for w in writers:
                w.close()
            await server.close()

    held, after = arun(main())
    assert held > n * half * 0.9  # the half frames were held ...
    assert after < n * half * 0.1  # ... and are gone


def test_tcp_peer_that_does_not_read_is_dropped(arun):
    async def main():
        outcome = asyncio.get_running_loop().create_future()

        async def handler(conn):
            big = Drafts(1, 0, 0, tuple(range(60_000)))  # ~180 kB a frame
            try:
                while True:
                    await conn.send(big)
            except ConnectionClosed as exc:
                outcome.set_result((exc, conn.sent.messages))

        server = await serve_tcp("127.0.0.1", 0, handler, frame_timeout=TIMEOUT)
        try:
            _, writer = await asyncio.open_connection(*server.address)  # and never read
            exc, sent = await asyncio.wait_for(outcome, 10)
            writer.close()
            return exc, sent
        finally:
            await server.close()

    exc, sent = arun(main())
    assert "has not read" in str(exc)
    assert sent < 500  # it stopped once the buffers were full, not after sending everything


def test_tcp_fast_sender_is_held_back_not_queued(arun):
    """A peer sends thousands of messages the application does not take yet: the reader stops
    reading (TCP flow control holds the peer), then everything arrives, in order."""
    count = 20 * MAX_QUEUED_MESSAGES

    async def main():
        conns: list = []
        release = asyncio.Event()
        got: list = []

        async def handler(conn):
            conns.append(conn)
            await release.wait()
            while len(got) < count:
                got.append(await conn.recv())

        server = await serve_tcp("127.0.0.1", 0, handler, frame_timeout=None)
        try:
            _, writer = await asyncio.open_connection(*server.address)
            payload = b"".join(encode_frame(Ping(float(i), i)) for i in range(count))
            writer.write(payload)
            await asyncio.sleep(0.5)  # the server reads what it may
            queued = len(conns[0]._inbox)
            release.set()
            await writer.drain()
            for _ in range(100):
                if len(got) == count:
                    break
                await asyncio.sleep(0.05)
            writer.close()
            return queued, got
        finally:
            await server.close()

    queued, got = arun(main())
    assert got == [Ping(float(i), i) for i in range(count)]  # nothing lost, in order
    # bounded by the inbox's limit plus one read chunk's worth of messages
    assert queued <= MAX_QUEUED_MESSAGES + (1 << 16) // len(encode_frame(Ping(0.0)))


# ---- QUIC ----------------------------------------------------------------------------------------


def test_quic_trickled_half_frame_is_dropped(arun, certs):
    async def main():
        loop = asyncio.get_running_loop()
        outcome, conns = loop.create_future(), []
        server = await serve_quic("127.0.0.1", 0, _recording_handler(outcome, conns),
                                  cert=certs.cert, key=certs.key, frame_timeout=TIMEOUT)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            await conn.send(Ping(2.0))
            conn._quic.send_stream_data(CONTROL_STREAM, struct.pack(">I", 1000) + b"\x95")
            conn._protocol.transmit()
            started = time.monotonic()
            for _ in range(20):
                if outcome.done():
                    break
                conn._quic.send_stream_data(CONTROL_STREAM, b"\x00")
                conn._protocol.transmit()
                await asyncio.sleep(TIMEOUT / 6)
            seen, exc = await asyncio.wait_for(outcome, 5)
            elapsed = time.monotonic() - started
            assert seen == [Ping(2.0)]
            assert isinstance(exc, ProtocolError) and "bytes of a frame" in str(exc)
            assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 2.0
            assert conns[0]._decoder.buffered == 0
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 5)
            await conn.close()
        finally:
            await server.close()

    arun(main())


def test_quic_flood_of_unprocessed_messages_is_dropped(arun, certs):
    async def main():
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        async def handler(conn):
            await asyncio.sleep(1.5)  # busy: takes nothing while the peer floods
            try:
                while True:
                    await conn.recv()
            except Exception as exc:  # noqa: BLE001
                outcome.set_result(exc)

        server = await serve_quic("127.0.0.1", 0, handler, cert=certs.cert, key=certs.key)
        try:
            conn = await connect_quic(*server.address, ca=certs.ca_cert)
            for i in range(6 * MAX_QUEUED_MESSAGES):
                await conn.send(Ping(float(i), i))
                if i % 256 == 0:
                    await asyncio.sleep(0)
            exc = await asyncio.wait_for(outcome, 10)
            await conn.close()
            return exc
        finally:
            await server.close()

    exc = arun(main(), timeout=20)
    assert isinstance(exc, ProtocolError) and "faster than" in str(exc)


def test_quic_close_to_a_dead_peer_is_bounded(arun, echo, certs):
    async def main():
        server = await serve_quic("127.0.0.1", 0, echo, cert=certs.cert, key=certs.key)
        conn = await connect_quic(*server.address, ca=certs.ca_cert)
        await conn.send(Ping(0.0))
        assert await conn.recv() == Ping(0.0)
        # the worker vanishes without a word: no FIN, no CONNECTION_CLOSE
        server._server.datagram_received = lambda data, addr: None
        server._server._transport.sendto = lambda data, addr=None: None
        started = time.monotonic()
        await conn.close()
        elapsed = time.monotonic() - started
        await server.close()
        return elapsed

    elapsed = arun(main())
    assert elapsed < 2 * LINGER_S + 0.5  # (was 3 s of linger plus 1 s of closing before)
