"""A delay proxy: a wide-area round trip between two processes on one machine, without root.

``tc netem`` needs root and delays every packet on an interface; this forwards one port to
another and holds each direction's data back by half the round trip (plus optional jitter), so a
real ``wanspec worker`` and ``wanspec controller`` on loopback meet the RTT a deployment would
(``wanspec delay-proxy``; ``benchmarks/realtime_fidelity.py`` puts real runs beside ``emulate``).

* **TCP** (the tcp transport): each accepted connection gets its own upstream connection.
* **UDP** (the quic transport): each client address gets its own upstream socket (forgotten
  after :data:`UDP_IDLE_S` without traffic).

Either way each direction is an :class:`_Outbox`: data is released in the order it came, each
piece at ``arrival + one_way + jitter`` but never before the one ahead of it, by one sender, so
jitter delays and never reorders (as the in-process link, :mod:`wanspec.transport.latency`).
A TCP side that closes (or resets) closes the other once the data ahead of it has gone.  Every
buffer is bounded: a direction holds at most :data:`MAX_HELD_BYTES` (TCP stops reading until it
drains; UDP drops datagrams past it, as a full router queue would).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

MAX_HELD_BYTES = 16 * 1024 * 1024  # per direction of one connection (or one UDP client)
UDP_IDLE_S = 60.0  # a UDP client silent this long is forgotten (its upstream socket closed)
CONNECT_TIMEOUT_S = 10.0
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


class _Outbox:
    """One direction: what came in goes out in order, each piece at its release time.

    ``send`` writes one piece (awaited if it returns an awaitable); ``at_end`` is called for the
    end of the stream.  :meth:`run` is the one sender; it raises what :meth:`fail` put in, after
    the data ahead of it."""

    def __init__(self, delay: Delay, rng: random.Random,
                 send: Callable[[bytes], Awaitable[None] | None],
                 at_end: Callable[[], None] = lambda: None) -> None:
        self.delay, self.rng, self.send, self.at_end = delay, rng, send, at_end
        self._queue: asyncio.Queue[tuple[float, bytes | BaseException | None]] = asyncio.Queue()
        self._last = 0.0
        self.held = 0  # bytes waiting
        self._room = asyncio.Event()
        self._room.set()

    def _release_at(self) -> float:
        jitter = self.rng.uniform(0.0, self.delay.jitter_s) if self.delay.jitter_s else 0.0
        self._last = max(asyncio.get_running_loop().time() + self.delay.one_way_s + jitter,
                         self._last)
        return self._last

    @property
    def full(self) -> bool:
        return self.held >= MAX_HELD_BYTES

    async def room(self) -> None:
        """Wait until the direction holds less than its bound."""
        await self._room.wait()

    def put(self, data: bytes | None) -> None:
        """``data`` arrived now (None: the end of the stream)."""
        self._queue.put_nowait((self._release_at(), data))
        if data:
            self.held += len(data)
            if self.full:
                self._room.clear()

    def fail(self, exc: BaseException) -> None:
        """The source broke: after what is ahead of it, :meth:`run` raises ``exc``."""
        self._queue.put_nowait((self._release_at(), exc))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            at, item = await self._queue.get()
            await asyncio.sleep(max(at - loop.time(), 0.0))
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.at_end()
                return
            sent = self.send(item)
            if sent is not None:
                await sent
            self.held -= len(item)
            if not self.full:
                self._room.set()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay,
                rng: random.Random) -> None:
    """Copy ``reader`` to ``writer`` through an outbox; returns after the end of the stream,
    raises if either side broke."""

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    def at_end() -> None:
        if writer.can_write_eof():
            writer.write_eof()

    box = _Outbox(delay, rng, send, at_end)

    async def take_in() -> None:
        try:
            while True:
                await box.room()
                data = await reader.read(_CHUNK)
                box.put(data or None)
                if not data:
                    return
        except OSError as exc:  # a reset: it ends the connection, after the data ahead of it
            box.fail(exc)

    inbound = asyncio.create_task(take_in())
    try:
        await box.run()
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
        pipes: list[asyncio.Task[None]] = []
        try:
            u_reader, u_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT_S)
            pipes = [asyncio.create_task(_pipe(c_reader, u_writer, self.delay,
                                               random.Random(self._rng.random()))),
                     asyncio.create_task(_pipe(u_reader, c_writer, self.delay,
                                               random.Random(self._rng.random())))]
            # both directions end at their EOF; a reset of either side ends the connection
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        except (OSError, asyncio.TimeoutError):
            pass  # the upstream cannot be reached: the client sees its connection closed
        except asyncio.CancelledError:
            pass  # the proxy is closing: this connection ends with it
        finally:
            for p in pipes:
                p.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


class _UdpClient(asyncio.DatagramProtocol):
    """The upstream socket of one client address, and its two directions."""

    def __init__(self, proxy: "UdpDelayProxy", client: tuple[str, int],
                 listener: asyncio.DatagramTransport) -> None:
        self.proxy, self.client = proxy, client
        self.transport: asyncio.DatagramTransport | None = None
        self.seen = time.monotonic()
        self.up = _Outbox(proxy.delay, random.Random(proxy._rng.random()), self._to_upstream)
        self.down = _Outbox(proxy.delay, random.Random(proxy._rng.random()),
                            lambda d: listener.sendto(d, client))
        self.tasks = [asyncio.create_task(self.up.run()), asyncio.create_task(self.down.run())]

    def _to_upstream(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen = time.monotonic()
        self.proxy._enqueue(self.down, data)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.transport is not None:
            self.transport.close()


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
        self._opening: set[asyncio.Task[None]] = set()
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
        for t in list(self._opening):
            t.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for c in self._clients.values():
            c.close()
        await asyncio.gather(*(t for c in self._clients.values() for t in c.tasks),
                             return_exceptions=True)
        self._clients.clear()
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> "UdpDelayProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = self._clients.get(addr)
        if client is None:
            client = self._admit(addr)
            if client is None:
                self.dropped += 1
                return
        client.seen = time.monotonic()
        self._enqueue(client.up, data)

    def _admit(self, addr: tuple[str, int]) -> _UdpClient | None:
        """A new client: its outboxes at once (datagrams queue while its socket opens)."""
        if len(self._clients) >= self.max_clients:
            self._forget_idle()
            if len(self._clients) >= self.max_clients:
                return None
        assert self._transport is not None
        client = self._clients[addr] = _UdpClient(self, addr, self._transport)
        task = asyncio.get_running_loop().create_task(self._open(client))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return client

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for addr, c in list(self._clients.items()):
            if now - c.seen > UDP_IDLE_S:
                c.close()
                del self._clients[addr]

    async def _open(self, client: _UdpClient) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: client, remote_addr=self.upstream)
        except OSError:  # the upstream cannot be reached: forget the client, drop its data
            client.close()
            self._clients.pop(client.client, None)

    def _enqueue(self, box: _Outbox, data: bytes) -> None:
        if box.full:
            self.dropped += 1
            return
        box.put(data)


async def run_proxy(upstream: tuple[str, int], listen: tuple[str, int], delay: Delay, *,
                    udp: bool = False, seed: int = 0,
                    on_ready: Callable[[int], None] = lambda port: None) -> None:
    """Serve until cancelled (``wanspec delay-proxy``); ``on_ready`` gets the bound port."""
    proxy: TcpDelayProxy | UdpDelayProxy = (
        UdpDelayProxy(upstream, delay, listen=listen, seed=seed) if udp
        else TcpDelayProxy(upstream, delay, listen=listen, seed=seed))
    async with proxy:
        on_ready(proxy.port)
        await asyncio.Event().wait()
