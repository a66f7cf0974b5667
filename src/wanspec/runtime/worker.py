"""The worker adapter: serve connections, each running a :class:`~wanspec.core.worker.WorkerCore`.

The core owns the protocol (handshake, sessions, errors); this module only moves messages, runs
draft passes on the worker's device, and closes connections when the core says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from wanspec.core.actions import Log, Send
from wanspec.core.worker import Close, DraftFor, Release, WorkerAction, WorkerCore, WorkerStats
from wanspec.models.backend import CausalLM, KVCache
from wanspec.models.fingerprint import tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION, ProtocolError
from wanspec.protocol.messages import Hello
from wanspec.runtime.placed import PlacedModel
from wanspec.timing.device import Device, PassCost
from wanspec.transport.base import Connection, ConnectionClosed

log = logging.getLogger("wanspec.worker")


class WorkerService:
    """Shared by all connections: one draft model on one device (the under-used site)."""

    def __init__(self, draft: CausalLM, *, cost: PassCost | None = None,
                 device: Device | None = None, max_sessions: int = 64) -> None:
        self.draft = draft
        self.device = device or Device("worker")
        self.placed = PlacedModel(draft, self.device, cost, "draft")
        self.max_sessions = max_sessions
        self.fingerprint = tokenizer_fingerprint(draft.tokenizer)
        self.connections = 0
        self.active: set[WorkerCore] = set()  # the cores of open connections
        self.totals = WorkerStats()  # of connections that have closed

    def hello(self) -> Hello:
        return Hello(version=PROTOCOL_VERSION, role="worker", model=self.draft.name,
                     tokenizer=self.fingerprint, vocab_size=self.draft.vocab_size,
                     capabilities=("drafts", "entropy"))

    async def handle(self, conn: Connection) -> None:
        """Serve one controller connection until it closes; never raises on peer errors."""
        self.connections += 1
        try:
            await _Connection(self, conn).run()
        finally:
            await conn.close()


class _Connection:
    """One controller connection: its core, its sessions' caches, its draft tasks."""

    def __init__(self, service: WorkerService, conn: Connection) -> None:
        self.svc = service
        self.conn = conn
        loop = asyncio.get_running_loop()
        self.core = WorkerCore(service.hello(), now=loop.time(),
                               max_sessions=service.max_sessions,
                               max_context=getattr(service.draft, "max_context", 1 << 16))
        self.caches: dict[int, KVCache] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        service.active.add(self.core)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
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
                await self._execute(self.core.on_message(msg, loop.time()))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.warning("dropping %s: %s", self.conn.peer, exc)
        finally:
            for t in self.tasks:
                t.cancel()
            self.core.on_connection_lost()
            self.caches.clear()
            self.svc.active.discard(self.core)
            self.svc.totals.add(self.core.stats)

    async def _execute(self, actions: Sequence[WorkerAction]) -> None:
        for a in actions:
            if isinstance(a, Send):
                await self.conn.send(a.msg)
            elif isinstance(a, DraftFor):
                if a.rid not in self.caches:
                    self.caches[a.rid] = self.svc.draft.new_cache()
                task = asyncio.create_task(self._draft(a))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(a, Release):
                self.caches.pop(a.rid, None)
            elif isinstance(a, Log):
                log.warning("%s: %s", self.conn.peer, a.message)
            elif isinstance(a, Close):
                self.closing = True

    async def _draft(self, a: DraftFor) -> None:
        cache = self.caches.get(a.rid)
        if cache is None:
            return
        ev = await self.svc.placed.run_draft(cache, a.run, a.sampling)
        try:
            await self._execute(self.core.on_draft_done(a.rid, ev))
        except ConnectionClosed:
            pass
