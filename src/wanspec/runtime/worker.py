"""The worker adapter: serve connections, each running a :class:`~wanspec.core.worker.WorkerCore`.

The core owns the protocol (handshake, sessions, errors) and the lookahead rule; this module only
moves messages, runs draft passes, feeds the cores the worker's load, and closes connections when
a core says so.

Every session of every connection drafts on one :class:`~wanspec.runtime.busy.SharedAccelerator`:
the passes waiting when the device is free run as one batched forward (oldest first, at most
``max_batch`` sequences), so many controllers' sessions share each draft pass.  A session has
one KV cache per lane of its draft tree (one for a plain chain; the core numbers them) and at
most one pass waiting per lane, so oldest-first is round-robin over lanes: a connection with many
sessions, or a session with many lanes, gets more passes only in proportion, and never delays
another's beyond one turn.  A branch's first pass forks its cache off its parent lane's
(:class:`~wanspec.models.backend.Feed`'s ``source``): the parent's prefix is copied, not recomputed.
A connection's core hears of all its passes in one batched forward at once
(:meth:`~wanspec.core.worker.WorkerCore.on_pass_done`), so each session is told once a pass.

The limits (:class:`~wanspec.core.worker.WorkerLimits`) are the cores' decisions; this adapter
counts the connections for :func:`~wanspec.core.worker.admit_connection`, and forgets everything
of a connection when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Sequence

from wanspec.core.actions import DraftDone, Log, Send
from wanspec.core.batcher import BatchLimits, PassKind
from wanspec.core.capacity import worker_pass_times
from wanspec.core.worker import (
    DEFAULT_WORKER_MAX_BATCH,
    Admit,
    Close,
    DraftFor,
    Release,
    WorkerAction,
    WorkerCore,
    WorkerLimits,
    WorkerLoad,
    WorkerStats,
    admit_connection,
)
from wanspec.models.backend import CausalLM, KVCache
from wanspec.models.fingerprint import tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION, ProtocolError
from wanspec.protocol.messages import Hello
from wanspec.runtime.busy import SharedAccelerator
from wanspec.runtime.placed import PlacedModel
from wanspec.timing import clock
from wanspec.timing.device import Device, PassCost
from wanspec.transport.base import Connection, ConnectionClosed

log = logging.getLogger("wanspec.worker")

BUSY_WINDOW_S = 2.0  # the busy fraction a Pong reports covers the last 2 s


class BusyMeter:
    """The fraction of the last ``window_s`` seconds a device was busy, from its running total of
    busy seconds, sampled whenever the load is refreshed (at least after every pass).

    Between two samples the total is taken to grow evenly; a pass counts when it ends, so a
    reading can overshoot and is clamped to [0, 1].  Samples closer than ``window_s / 64`` are
    merged, so the history stays short however many passes run.
    """

    def __init__(self, window_s: float = BUSY_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (time, busy total), oldest first

    def fraction(self, now: float, busy_total: float) -> float:
        samples = self._samples
        if len(samples) > 1 and now - samples[-1][0] < self.window_s / 64:
            samples[-1] = (now, busy_total)
        else:
            samples.append((now, busy_total))
        start = now - self.window_s
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()  # keep one sample at or before the window's start
        t0, b0 = samples[0]
        if t0 < start:  # interpolate the total at the window's start
            t1, b1 = samples[1]
            b0 += (b1 - b0) * (start - t0) / (t1 - t0)
            t0 = start
        if now <= t0:
            return 0.0
        return min(max((busy_total - b0) / (now - t0), 0.0), 1.0)


class WorkerService:
    """Shared by all connections: one draft model on one device (the under-used site), its passes
    batched across every session of every connection."""

    def __init__(self, draft: CausalLM, *, cost: PassCost | None = None,
                 device: Device | None = None, limits: WorkerLimits | None = None,
                 max_batch: int = DEFAULT_WORKER_MAX_BATCH, fit_trees: bool = True,
                 auth_key: bytes | None = None) -> None:
        """``auth_key``: the pre-shared key every controller must prove before it is served
        (None: no such check; mutual TLS, if any, is the transport's).  ``fit_trees``: branch
        lanes only while the device's measured passes stay cheap
        (:func:`~wanspec.core.capacity.cheap_sequences`)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.draft = draft
        self.device = device or Device("worker")
        self.placed = PlacedModel(draft, self.device, cost, "draft")
        self.accelerator = SharedAccelerator(None, self.placed,
                                             BatchLimits(max_sequences=max_batch))
        self.limits = limits or WorkerLimits()
        self.max_batch = max_batch
        # read by every connection's core; its trees grow only while passes stay cheap here
        self.load = WorkerLoad(max_batch=max_batch,
                               passes=worker_pass_times() if fit_trees else None)
        self.accelerator.on_pass_done = self._on_pass_done
        self._compute_seen = 0.0  # the device's compute_s when the last pass was fitted
        self.fingerprint = tokenizer_fingerprint(draft.tokenizer)
        self.auth_key = auth_key
        self.connections = 0  # served since the start (a count, not state)
        self.refused = 0  # connections refused or dropped at the connection limit
        self.totals = WorkerStats()  # of connections that have closed
        self._open: set[_Connection] = set()  # served now, handshakes included
        self._refusing = 0  # connections being answered "overloaded" now
        self._busy = BusyMeter()
        self._warned: set[str] = set()  # notices already logged as warnings (log_once)

    def _on_pass_done(self, _: PassKind, sequences: int, longest: int, seconds: float) -> None:
        """Teach the tree fit a draft pass.  Its time, or, where ``--draft-ms`` is a floor on
        real time, its real compute against that floor (the device runs one pass at a time, so
        the compute since the last pass is this one's)."""
        compute = self.device.stats.compute_s - self._compute_seen
        self._compute_seen = self.device.stats.compute_s
        cost = self.placed.cost
        if cost is not None and clock.host_counts():
            self.load.floor_s = cost.seconds(1)
            seconds = compute
        self.load.on_pass(sequences, longest, seconds)

    @property
    def active(self) -> set[WorkerCore]:
        """The cores of open connections."""
        return {c.core for c in self._open}

    def hello(self) -> Hello:
        return Hello(version=PROTOCOL_VERSION, role="worker", model=self.draft.name,
                     tokenizer=self.fingerprint, vocab_size=self.draft.vocab_size,
                     capabilities=("drafts", "entropy", "branches"))

    async def handle(self, conn: Connection) -> None:
        """Serve one controller connection until it closes; never raises on peer errors.

        Beyond the connection limit it is refused (its first message is answered with
        ``Error(code="overloaded")``) or, when even the refusals are at their limit, closed."""
        verdict = admit_connection(len(self._open), self._refusing, self.limits)
        try:
            if verdict is Admit.SERVE:
                self.connections += 1
                await _Connection(self, conn).run()
            elif verdict is Admit.REFUSE:
                self.refused += 1
                self._refusing += 1
                try:
                    await _Connection(self, conn, overloaded=True).run()
                finally:
                    self._refusing -= 1
            else:
                self.refused += 1
                self.log_once(conn.peer, f"dropping the connection: over the limit of "
                                         f"{self.limits.max_connections} connections")
        finally:
            await conn.close()

    def log_once(self, peer: str, message: str) -> None:
        """A peer's notice as a warning the first time its words are seen, then at info level:
        2,000 refused connections are one warning, not a log an attacker can flood."""
        if message in self._warned:
            log.info("%s: %s", peer, message)
            return
        if len(self._warned) >= 256:
            self._warned.clear()
        self._warned.add(message)
        log.warning("%s: %s (the same notice for other peers is logged at info level)", peer,
                    message)

    def refresh_load(self, now: float) -> None:
        """Feed the cores the worker's load: the device's recent busy fraction and the live
        sessions of all connections.  When the sessions changed, every core may start the passes
        its sessions' new lookahead caps allow."""
        self.load.busy = self._busy.fraction(now, self.device.stats.busy_s)
        sessions = sum(len(c.core.sessions) for c in self._open)
        if sessions != self.load.sessions:
            self.load.sessions = sessions
            for c in list(self._open):
                for a in c.core.on_load_changed():
                    c.apply(a)


class _Connection:
    """One controller connection: its core, its sessions' caches, their draft passes."""

    def __init__(self, service: WorkerService, conn: Connection, *,
                 overloaded: bool = False) -> None:
        self.svc = service
        self.conn = conn
        self.served = not overloaded
        loop = asyncio.get_running_loop()
        self.core = WorkerCore(service.hello(), now=loop.time(), limits=service.limits,
                               max_context=getattr(service.draft, "max_context", 1 << 16),
                               load=service.load, overloaded=overloaded,
                               auth_key=service.auth_key)
        self.caches: dict[tuple[int, int], KVCache] = {}  # (session, cache number)
        # per session and cache: its pass, until it ran
        self.waiting: dict[tuple[int, int], asyncio.Future[DraftDone]] = {}
        # passes that ended, until the core hears of them (all those of one batched pass at once)
        self.ended: list[tuple[DraftFor, asyncio.Future[DraftDone], KVCache, KVCache | None]] = []
        self.tasks: set[asyncio.Task[None]] = set()  # handing the core a pass, doing what it says
        self.closing = False
        self.gone = False
        self._writing = asyncio.Lock()  # _execute: the core's actions reach the wire in order

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.served:
            self.svc._open.add(self)
        try:
            while not self.closing:
                deadline = self.core.next_timer()
                try:
                    if deadline is None:
                        msg = await self.conn.recv()
                    else:
                        msg = await asyncio.wait_for(self.conn.recv(),
                                                     max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:  # (fired at its deadline, maybe a hair early)
                    await self._execute(self.core.on_timer(max(loop.time(), deadline)))
                    continue
                self.svc.refresh_load(loop.time())  # a Pong reports the load as of now
                await self._execute(self.core.on_message(msg, loop.time()))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.warning("dropping %s: %s", self.conn.peer, exc)
        finally:
            self.gone = True
            for t in self.tasks:
                t.cancel()
            for fut in self.waiting.values():
                fut.cancel()  # (withdrawn from the accelerator's queue)
            self.waiting.clear()
            for a in self.core.on_connection_lost():
                self.apply(a)
            for cache in self.caches.values():  # (on_connection_lost released them all)
                cache.close()
            self.caches.clear()
            self.svc._open.discard(self)
            self.svc.totals.add(self.core.stats)
            self.svc.refresh_load(loop.time())  # the others' sessions may draft further now

    async def _execute(self, actions: Sequence[WorkerAction], *,
                       passes_first: bool = False) -> None:
        """Carry out the core's actions in order.  One caller at a time, first come first served
        (the lock): a send may wait for the socket, and what the core decided later -- another
        pass's drafts, a commit's -- must not reach the wire before what it decided earlier.

        ``passes_first`` (a pass's outcome: its drafts to send, the next passes to run): the
        passes go to the device before the drafts are encoded and sent, which then overlaps
        them instead of delaying them.  Only where the actions are just those two kinds (a
        Release or a Close keeps its place)."""
        async with self._writing:
            if (passes_first and any(isinstance(a, DraftFor) for a in actions)
                    and all(isinstance(a, (Send, DraftFor)) for a in actions)):
                for a in actions:
                    if isinstance(a, DraftFor):
                        self.apply(a)
                actions = [a for a in actions if isinstance(a, Send)]
                await self.svc.accelerator.handed_over()
            for a in actions:
                if isinstance(a, Send):
                    await self.conn.send(a.msg)
                else:
                    self.apply(a)
        self.svc.refresh_load(asyncio.get_running_loop().time())

    def apply(self, a: WorkerAction) -> None:
        """Carry out an action other than a Send (none of them waits)."""
        if isinstance(a, DraftFor):
            source = None
            if a.copy_from is not None:
                source = self.caches.get((a.rid, a.copy_from))
                if source is None:
                    raise RuntimeError(f"session {a.rid}: cache {a.cache} copies cache "
                                       f"{a.copy_from}, which the session does not have")
            key = (a.rid, a.cache)
            cache = self.caches.get(key)
            if cache is None:
                cache = self.caches[key] = self.svc.draft.new_cache()
            fut = self.svc.accelerator.enqueue(PassKind.DRAFT, cache, a.run, a.sampling, source,
                                               owner=(self, a.rid))
            self.waiting[key] = fut
            fut.add_done_callback(lambda f: self._pass_ended(a, f, cache, source))
        elif isinstance(a, Release):
            # its waiting passes leave the queue (or the running pass skips them); the KV slots
            # go back now, or when a pass still writing into (or copying from) them ends
            for key in [k for k in self.waiting if k[0] == a.rid]:
                self.waiting.pop(key).cancel()
            for key in [k for k in self.caches if k[0] == a.rid]:
                self.caches.pop(key).close()
        elif isinstance(a, Log):
            self.svc.log_once(self.conn.peer, a.message)
        elif isinstance(a, Close):
            self.closing = True
        elif isinstance(a, Send):
            raise TypeError("Send is carried out by _execute")

    def _pass_ended(self, a: DraftFor, fut: asyncio.Future[DraftDone], cache: KVCache,
                    source: KVCache | None) -> None:
        """A draft pass ended (or was withdrawn).  The core hears of every pass of one batched
        forward at once: their futures' callbacks all run before the :meth:`_flush` the first
        of them schedules."""
        key = (a.rid, a.cache)
        if self.waiting.get(key) is fut:
            del self.waiting[key]
        if fut.cancelled() or self.gone:
            return  # withdrawn (its session released, or the connection closing)
        self.ended.append((a, fut, cache, source))
        if len(self.ended) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Hand the passes that ended to a task that tells the core and carries out what it
        says (sends wait for the transport; a failure there closes the connection)."""
        ended, self.ended = self.ended, []
        if self.gone:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(ended))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _deliver(self, ended: list[tuple[DraftFor, asyncio.Future[DraftDone], KVCache,
                                                KVCache | None]]) -> None:
        results: list[tuple[int, DraftDone]] = []
        failed: list[tuple[DraftFor, BaseException]] = []
        for a, fut, cache, source in ended:
            exc = fut.exception()
            if exc is None:
                results.append((a.rid, fut.result()))
            elif not (cache.closed or (source is not None and source.closed)):
                log.warning("%s: session %d: draft pass failed: %r", self.conn.peer, a.rid, exc)
                failed.append((a, exc))
            # (else the session was released while its pass waited: dropped quietly)
        actions = self.core.on_pass_done(results)
        for a, exc in failed:
            actions.extend(self.core.on_draft_failed(a.rid, a.run.op, type(exc).__name__))
        try:
            await self._execute(actions, passes_first=True)
        except ConnectionClosed:
            pass

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task handing the core a pass's results ended.  One that failed (a bug of ours, or
        the transport failing in a way it should not) ends the connection, whose sessions would
        otherwise wait for it forever; its controllers decode locally.  Never an unretrieved
        exception."""
        self.tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s: a draft task failed, closing the connection: %r", self.conn.peer,
                  task.exception())
        self.closing = True
        closer = asyncio.get_running_loop().create_task(self.conn.close())  # ends run()'s recv
        closer.add_done_callback(lambda t: t.cancelled() or t.exception())
