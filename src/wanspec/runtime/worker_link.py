"""The controller's connection to one worker, shared by all requests that draft there.

The protocol -- handshake, RTT pings, back-off, routing by request id -- is
:class:`~wanspec.core.link.LinkCore`'s; :class:`WorkerLink` only moves data: it opens connections,
feeds the core what arrives, runs its timers, and delivers per-request messages (and a lost link)
to the requests' queues.  :class:`~wanspec.runtime.controller.RemoteEngine` holds one per worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Sequence

from wanspec.core.actions import Send, WorkerLost
from wanspec.core.link import LinkAction, LinkCore, Lost, Route, Up
from wanspec.errors import WanspecError
from wanspec.protocol.codec import ProtocolError
from wanspec.protocol.messages import Hello, Message, SessionStats
from wanspec.transport.base import Connection, ConnectionClosed, PeerRefused

log = logging.getLogger("wanspec.controller")

Connector = Callable[[], Awaitable[Connection]]
MAX_KEPT_STATS = 1024  # the worker's accounts of finished requests kept for wait_stats


class WorkerLink:
    """A connection to one worker, shared by all requests of a controller.

    The protocol lives in :class:`~wanspec.core.link.LinkCore`; this adapter opens connections,
    feeds it what arrives, runs its timers, and delivers per-request messages (and a lost link)
    to the queues of the requests that use the worker.
    """

    def __init__(self, connector: Connector, hello: Hello, *, hello_timeout: float = 10.0,
                 ping_interval: float = 1.0, backoff: tuple[float, float] = (0.5, 30.0),
                 rtt_prior_s: float = 0.05, name: str = "worker",
                 auth_key: bytes | None = None) -> None:
        """``auth_key``: the pre-shared key to prove, and to require the worker to prove."""
        self.connector = connector
        self.name = name  # how logs and results name this worker (its address, usually)
        self.core = LinkCore(hello, rtt_prior_s=rtt_prior_s, hello_timeout_s=hello_timeout,
                             ping_interval_s=ping_interval, backoff_s=backoff, auth_key=auth_key)
        self.conn: Connection | None = None
        self.session_stats: dict[int, SessionStats] = {}  # the worker's accounts, by request
        # requests whose account may still come (a worker's account of any other rid is dropped)
        self._awaiting_stats: dict[int, None] = {}
        self._routes: dict[int, asyncio.Queue[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._logged: set[str] = set()
        self._connect_lock: asyncio.Lock | None = None
        self._handshake: asyncio.Future[bool] | None = None
        self._timers_changed: asyncio.Event | None = None
        self._stats_event: asyncio.Event | None = None
        self._sending: set[asyncio.Task[None]] = set()  # sends nobody waits for (send_soon)

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.closed and self.core.up

    @property
    def rtt(self) -> float | None:
        """The link's RTT estimate (seconds), None before the first handshake."""
        return self.core.rtt.value

    @property
    def last_error(self) -> str | None:
        return self.core.last_error

    @property
    def peer_hello(self) -> Hello | None:
        return self.core.peer

    async def ensure(self) -> bool:
        """Connect (or reconnect, respecting back-off); False if the worker is unusable now.

        Concurrent callers share one attempt: requests that start together use one connection.
        """
        if self.up:
            return True
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.up:
                return True
            return await self._connect_once()

    async def _connect_once(self) -> bool:
        loop = asyncio.get_running_loop()
        if not self.core.may_connect(loop.time()):
            return False
        try:
            conn = await self.connector()
        except (WanspecError, OSError) as exc:
            await self._execute(self.core.on_closed(str(exc) or type(exc).__name__, loop.time()))
            return False
        for t in self._tasks:  # the previous connection's reader and timers, if any
            t.cancel()
        self.conn = conn
        self._handshake = loop.create_future()
        self._timers_changed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._reader(conn)),
                       asyncio.create_task(self._timers(conn))]
        await self._execute(self.core.connect(loop.time()))
        return await self._handshake

    def route(self, rid: int, queue: asyncio.Queue[Any] | None = None) -> asyncio.Queue[Any]:
        """Deliver request ``rid``'s messages (and a lost link) to ``queue`` (a new one if None)."""
        q: asyncio.Queue[Any] = queue if queue is not None else asyncio.Queue()
        self._routes[rid] = q
        if len(self._awaiting_stats) >= MAX_KEPT_STATS:  # (accounts that never came)
            self._awaiting_stats.pop(next(iter(self._awaiting_stats)))
        self._awaiting_stats[rid] = None
        return q

    def unroute(self, rid: int) -> None:
        self._routes.pop(rid, None)

    async def send(self, msg: Message) -> None:
        if self.conn is None:
            raise ConnectionClosed("not connected")
        await self.conn.send(msg)

    async def _reader(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.conn is conn:
                msg = await conn.recv()
                await self._execute(self.core.on_message(msg, loop.time()))
        except PeerRefused as exc:  # e.g. our TLS client certificate, in the transport's words
            reason = f"worker refused the connection: {exc}"
        except ConnectionClosed:
            reason = "connection closed by the worker"
        except ProtocolError as exc:
            reason = f"protocol error from worker: {exc}"
        except Exception as exc:  # pragma: no cover - defensive: never leave requests hanging
            reason = f"worker link failed: {exc!r}"
        else:
            return
        if self.conn is conn:
            await self._execute(self.core.on_closed(reason, loop.time()))

    async def _timers(self, conn: Connection) -> None:
        """Run the core's timers (handshake deadline, pings) for as long as ``conn`` is ours."""
        loop = asyncio.get_running_loop()
        changed = self._timers_changed
        assert changed is not None
        while self.conn is conn:
            deadline = self.core.next_timer()
            changed.clear()
            timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                await asyncio.wait_for(changed.wait(), timeout)
            except asyncio.TimeoutError:
                # asyncio may wake a timer up to its clock resolution early: as far as the core
                # is concerned it fired at its deadline
                assert deadline is not None
                await self._execute(self.core.on_timer(max(loop.time(), deadline)))

    async def _execute(self, actions: Sequence[LinkAction]) -> None:
        for a in actions:
            if isinstance(a, Send):
                try:
                    if self.conn is not None:
                        await self.conn.send(a.msg)
                except ConnectionClosed:
                    loop = asyncio.get_running_loop()
                    await self._execute(self.core.on_closed("connection to the worker closed",
                                                            loop.time()))
            elif isinstance(a, Route):
                if isinstance(a.msg, SessionStats):
                    self._keep_stats(a.msg)
                q = self._routes.get(a.rid)
                if q is not None:
                    q.put_nowait(a.msg)
            elif isinstance(a, Up):
                if self._handshake is not None and not self._handshake.done():
                    self._handshake.set_result(True)
            elif isinstance(a, Lost):
                await self._lost(a.reason)
        if self._timers_changed is not None:
            self._timers_changed.set()

    def send_soon(self, msg: Message, *, on: Connection | None = None) -> None:
        """Send ``msg`` without waiting (from code that may not wait: a cancelled request's
        clean-up); a closed connection drops it, as it drops the session it concerns.  ``on``:
        only over that connection (a message about one of its sessions: if the link has
        reconnected meanwhile, the new connection never had the session)."""
        async def send() -> None:
            if on is not None and self.conn is not on:
                return
            try:
                await self.send(msg)
            except ConnectionClosed:
                pass

        task = asyncio.create_task(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _keep_stats(self, stats: SessionStats) -> None:
        """Keep the worker's account of a request we started (once): what a worker sends about
        other ids grows nothing."""
        if stats.rid not in self._awaiting_stats:
            return
        del self._awaiting_stats[stats.rid]
        if len(self.session_stats) >= MAX_KEPT_STATS:
            self.session_stats.pop(next(iter(self.session_stats)))
        self.session_stats[stats.rid] = stats
        if self._stats_event is not None:
            self._stats_event.set()

    async def _lost(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("worker %s unavailable: %s", self.name, reason)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(False)
        conn, self.conn = self.conn, None
        for q in self._routes.values():
            q.put_nowait(WorkerLost(reason))
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                pass

    async def wait_stats(self, rids: Sequence[int], timeout: float) -> dict[int, SessionStats]:
        """Wait (bounded) for the worker's accounts of finished sessions; returns those that came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.up and not all(r in self.session_stats for r in rids):
            self._stats_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._stats_event.wait(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                break
        return {r: self.session_stats[r] for r in rids if r in self.session_stats}

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()
