"""A delay proxy: a wide-area round trip between two processes on one machine, without root.

``tc netem`` needs root and delays every packet on an interface; this forwards one port to
another and holds each direction's data back by half the round trip (plus optional jitter), so a
real ``wanspec worker`` and ``wanspec controller`` on loopback meet the RTT a deployment would
(``wanspec delay-proxy``; ``benchmarks/realtime_fidelity.py`` puts real runs beside ``emulate``).

* **TCP** (the tcp transport): each accepted connection gets its own upstream connection; the
  bytes of each direction are released in order, each chunk at ``arrival + one_way + jitter``
  but never before the chunk ahead of it (a byte stream cannot reorder), so jitter delays and
  never reorders, as in the in-process link (:mod:`wanspec.transport.latency`).  A side that
  closes closes the other once its data in flight has gone.
* **UDP** (the quic transport): each client address gets its own upstream socket; datagrams are
  delayed the same way, in order.

Every buffer is bounded: a direction holds at most :data:`MAX_HELD_BYTES` (TCP stops reading
until it drains; UDP drops datagrams past it, as a full router queue would).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

MAX_HELD_BYTES = 16 * 1024 * 1024  # per direction of one connection (or one UDP client)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Delay:
    """One direction's delay: ``one_way_s`` plus uniform jitter in ``[0, jitter_s]``."""

    one_way_s: float
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.one_way_s <= 60.0 and 0.0 <= self.jitter_s <= 60.0):
            raise ValueError("delays must be between 0 and 60 s")

    @classmethod
    def from_rtt_ms(cls, rtt_ms: float, jitter_ms: float = 0.0) -> "Delay":
        return cls(rtt_ms / 2000.0, jitter_ms / 1000.0)


class _Release:
    """In-order release times of one direction: arrival + delay, never before the previous."""

    def __init__(self, delay: Delay, rng: random.Random) -> None:
        self.delay, self.rng, self.last = delay, rng, 0.0

    def at(self, now: float) -> float:
        jitter = self.rng.uniform(0.0, self.delay.jitter_s) if self.delay.jitter_s else 0.0
        self.last = max(now + self.delay.one_way_s + jitter, self.last)
        return self.last


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                release: _Release) -> None:
    """Copy ``reader`` to ``writer``, each chunk held back until its release time."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    room = asyncio.Semaphore(max(MAX_HELD_BYTES // _CHUNK, 1))  # chunks held, at most

    async def take_in() -> None:
        while True:
            await room.acquire()
            data = await reader.read(_CHUNK)
            await held.put((release.at(loop.time()), data))
            if not data:
                return

    async def give_out() -> None:
        while True:
            at, data = await held.get()
            room.release()
            await asyncio.sleep(max(at - loop.time(), 0.0))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    inbound = asyncio.create_task(take_in())
    try:
        await give_out()
    finally:
        inbound.cancel()


class TcpDelayProxy:
    """Forward ``listen`` to ``upstream`` with ``delay`` each way; use as ``async with``."""

    def __init__(self, upstream: tuple[str, int], delay: Delay, *,
                 listen: tuple[str, int] = ("127.0.0.1", 0), seed: int = 0) -> None:
        self.upstream, self.delay, self.listen = upstream, delay, listen
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> "TcpDelayProxy":
        self._server = await asyncio.start_server(self._serve, *self.listen)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> "TcpDelayProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
                     ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        u_writer: asyncio.StreamWriter | None = None
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            up = _Release(self.delay, random.Random(self._rng.random()))
            down = _Release(self.delay, random.Random(self._rng.random()))
            pipes = [asyncio.create_task(_pipe(c_reader, u_writer, up)),
                     asyncio.create_task(_pipe(u_reader, c_writer, down))]
            try:
                # both directions end at EOF; a reset of either side ends the connection
                done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the upstream cannot be reached: the client sees its connection closed
        finally:
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


class _UdpClient(asyncio.DatagramProtocol):
    """The upstream socket of one client address: answers go back to that address, delayed."""

    def __init__(self, proxy: "UdpDelayProxy", client: tuple[str, int]) -> None:
        self.proxy, self.client = proxy, client
        self.transport: asyncio.DatagramTransport | None = None
        self.up = _Release(proxy.delay, random.Random(proxy._rng.random()))
        self.down = _Release(proxy.delay, random.Random(proxy._rng.random()))
        self.held = [0, 0]  # bytes in flight: up, down

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        listener = self.proxy._transport
        if listener is not None:
            self.proxy._later(self, 1, self.down, data, lambda d: listener.sendto(d, self.client))


class UdpDelayProxy(asyncio.DatagramProtocol):
    """Forward UDP datagrams from ``listen`` to ``upstream`` with ``delay`` each way."""

    def __init__(self, upstream: tuple[str, int], delay: Delay, *,
                 listen: tuple[str, int] = ("127.0.0.1", 0), seed: int = 0,
                 max_clients: int = 64) -> None:
        self.upstream, self.delay, self.listen = upstream, delay, listen
        self.max_clients = max_clients
        self._rng = random.Random(seed)
        self._transport: asyncio.DatagramTransport | None = None
        self._clients: dict[tuple[str, int], _UdpClient] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self.dropped = 0

    @property
    def port(self) -> int:
        assert self._transport is not None, "not started"
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> "UdpDelayProxy":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                                 local_addr=self.listen)
        return self

    async def close(self) -> None:
        for c in self._clients.values():
            if c.transport is not None:
                c.transport.close()
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> "UdpDelayProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = self._clients.get(addr)
        if client is None:
            if addr in self._pending:  # its upstream socket is being opened
                self._pending[addr].append(data)
                return
            if len(self._clients) + len(self._pending) >= self.max_clients:
                self.dropped += 1
                return
            self._pending[addr] = [data]
            asyncio.get_running_loop().create_task(self._open(addr))
            return
        self._forward(client, data)

    async def _open(self, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        client = _UdpClient(self, addr)
        await loop.create_datagram_endpoint(lambda: client, remote_addr=self.upstream)
        self._clients[addr] = client
        for data in self._pending.pop(addr, []):
            self._forward(client, data)

    def _forward(self, client: _UdpClient, data: bytes) -> None:
        upstream = client.transport
        if upstream is not None:
            self._later(client, 0, client.up, data, upstream.sendto)

    def _later(self, client: _UdpClient, way: int, release: _Release, data: bytes,
               send: Any) -> None:
        if client.held[way] + len(data) > MAX_HELD_BYTES:
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        client.held[way] += len(data)

        def go() -> None:
            client.held[way] -= len(data)
            send(data)

        loop.call_at(release.at(loop.time()), go)


async def run_proxy(upstream: tuple[str, int], listen: tuple[str, int], delay: Delay, *,
                    udp: bool = False, seed: int = 0) -> None:
    """Serve until cancelled (``wanspec delay-proxy``)."""
    proxy: TcpDelayProxy | UdpDelayProxy = (
        UdpDelayProxy(upstream, delay, listen=listen, seed=seed) if udp
        else TcpDelayProxy(upstream, delay, listen=listen, seed=seed))
    async with proxy:
        await asyncio.Event().wait()
