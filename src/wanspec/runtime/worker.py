"""The worker adapter: serve connections, run :class:`~wanspec.core.worker.WorkerCore` on a draft."""

from __future__ import annotations

import asyncio
import logging

from wanspec.core.worker import DraftFor, Release, Send, WorkerCore
from wanspec.models.backend import CausalLM, KVCache
from wanspec.models.fingerprint import tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION, ProtocolError, check_hello
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SessionStart,
)
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing.device import Device, PassCost
from wanspec.transport.base import Connection, ConnectionClosed

log = logging.getLogger("wanspec.worker")

HELLO_TIMEOUT_S = 10.0


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
        self.cores: list[WorkerCore] = []

    def hello(self) -> Hello:
        return Hello(version=PROTOCOL_VERSION, role="worker", model=self.draft.name,
                     tokenizer=self.fingerprint, vocab_size=self.draft.vocab_size,
                     capabilities=("drafts", "entropy"))

    async def handle(self, conn: Connection) -> None:
        """Serve one controller connection until it closes; never raises on peer errors."""
        self.connections += 1
        try:
            await _Session(self, conn).run()
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            log.warning("dropping %s: %s", conn.peer, exc)
        except asyncio.TimeoutError:
            log.warning("dropping %s: no Hello within %.0f s", conn.peer, HELLO_TIMEOUT_S)
        finally:
            await conn.close()


class _Session:
    """One connection's worth of sessions."""

    def __init__(self, service: WorkerService, conn: Connection) -> None:
        self.svc = service
        self.conn = conn
        self.core = WorkerCore(max_sessions=service.max_sessions,
                               max_context=getattr(service.draft, "max_context", 1 << 16))
        service.cores.append(self.core)
        self.caches: dict[int, KVCache] = {}
        self.sampling: dict[int, SamplingParams] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        first = await asyncio.wait_for(self.conn.recv(), HELLO_TIMEOUT_S)
        if not isinstance(first, Hello):
            await self._fatal("expected Hello first")
            return
        mine = self.svc.hello()
        try:
            check_hello(mine, first)
        except ProtocolError as exc:
            await self._fatal(str(exc))
            return
        await self.conn.send(mine)
        try:
            while True:
                msg = await self.conn.recv()
                await self._on_message(msg)
        finally:
            for t in self.tasks:
                t.cancel()
            for rid in list(self.core.sessions):
                self.core.drop(rid)
            self.caches.clear()

    async def _fatal(self, message: str) -> None:
        log.warning("refusing %s: %s", self.conn.peer, message)
        try:
            await self.conn.send(Error(message, code="handshake"))
        except ConnectionClosed:
            pass

    async def _on_message(self, msg: Message) -> None:
        if isinstance(msg, SessionStart):
            try:
                self.sampling[msg.rid] = SamplingParams(msg.temperature, msg.top_k, msg.top_p, msg.seed)
                actions = self.core.on_start(msg)
            except Exception as exc:  # bad parameters from the peer: refuse this session only
                await self.conn.send(Error(str(exc), rid=msg.rid, code="session"))
                return
            self.caches[msg.rid] = self.svc.draft.new_cache()
        elif isinstance(msg, Commit):
            try:
                actions = self.core.on_commit(msg)
            except ValueError as exc:
                await self.conn.send(Error(str(exc), rid=msg.rid, code="session"))
                actions = self.core.drop(msg.rid)
        elif isinstance(msg, Cancel):
            actions = self.core.on_cancel(msg)
        elif isinstance(msg, Ping):
            await self.conn.send(Pong(msg.t, msg.seq))
            return
        elif isinstance(msg, Error):
            log.warning("controller reported: %s", msg.message)
            return
        else:
            return
        await self._execute(actions)

    async def _execute(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Send):
                await self.conn.send(a.msg)
            elif isinstance(a, Release):
                self.caches.pop(a.rid, None)
                self.sampling.pop(a.rid, None)
            elif isinstance(a, DraftFor):
                task = asyncio.create_task(self._draft(a))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _draft(self, a: DraftFor) -> None:
        cache = self.caches.get(a.rid)
        sampling = self.sampling.get(a.rid)
        if cache is None or sampling is None:
            return
        ev = await self.svc.placed.run_draft(cache, a.run, sampling)
        try:
            await self._execute(self.core.on_draft_done(a.rid, ev))
        except ConnectionClosed:
            pass
