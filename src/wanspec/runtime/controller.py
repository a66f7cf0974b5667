"""The controller adapter: target (+ optional local draft) here, drafts from a remote worker.

:class:`WorkerLink` owns the connection to the worker (handshake, RTT pings, reconnect with
backoff, routing messages to requests by id).  :class:`RemoteEngine` runs one
:class:`~wanspec.core.controller.ControllerCore` per request.  Any worker trouble -- unreachable,
wrong protocol or tokenizer, dying mid-request -- turns into ``on_worker_lost``: the request
completes with identical output by local SD or target-only decoding, and the reason is logged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from typing import Any, Awaitable, Callable, Sequence

from wanspec.core.actions import DraftDone, EmitTokens, Finished, RunDraft, RunTarget, Site, TargetDone
from wanspec.core.controller import ControllerConfig, ControllerCore, Log, SendToWorker
from wanspec.core.estimates import LinkEstimates
from wanspec.core.stopping import StopCriteria
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.fingerprint import check_compatible, tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION, ProtocolError, check_hello
from wanspec.protocol.messages import Error, Hello, Message, Ping, Pong, SessionStats
from wanspec.runtime.engine import GenerationResult, TimingConfig
from wanspec.runtime.local import OnTokens
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing.device import Device
from wanspec.transport.base import Connection, ConnectionClosed

log = logging.getLogger("wanspec.controller")

Connector = Callable[[], Awaitable[Connection]]


class WorkerLink:
    """A connection to one worker, shared by all requests of a controller."""

    def __init__(self, connector: Connector, hello: Hello, *, hello_timeout: float = 10.0,
                 ping_interval: float = 1.0, backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.connector = connector
        self.hello = hello
        self.hello_timeout = hello_timeout
        self.ping_interval = ping_interval
        self.backoff_min, self.backoff_max = backoff
        self.conn: Connection | None = None
        self.peer_hello: Hello | None = None
        self.rtt: float | None = None
        self.last_error: str | None = None
        self._routes: dict[int, asyncio.Queue[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._next_attempt = 0.0
        self._delay = self.backoff_min
        self._ping_seq = itertools.count(1)
        self._logged: set[str] = set()
        self.session_stats: dict[int, SessionStats] = {}
        self._connect_lock: asyncio.Lock | None = None
        self._stats_event: asyncio.Event | None = None

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def ensure(self) -> bool:
        """Connect (or reconnect, respecting backoff); False if the worker is unusable now.

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
        if loop.time() < self._next_attempt:
            return False
        try:
            conn = await self.connector()
            t0 = loop.time()
            await conn.send(self.hello)
            reply = await asyncio.wait_for(conn.recv(), self.hello_timeout)
            if isinstance(reply, Error):
                raise ProtocolError(f"worker refused the connection: {reply.message}")
            if not isinstance(reply, Hello):
                raise ProtocolError("worker did not answer with Hello (wrong protocol?)")
            check_hello(self.hello, reply)
            self.rtt = loop.time() - t0
        except (WanspecError, OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or exc.__class__.__name__
            if isinstance(exc, asyncio.TimeoutError):
                reason = "worker did not complete the handshake in time"
            self._fail(reason)
            try:
                await conn.close()  # type: ignore[possibly-undefined]
            except Exception:
                pass
            return False
        self.conn, self.peer_hello = conn, reply
        self._delay = self.backoff_min
        self.last_error = None
        for t in self._tasks:  # the previous connection's reader/pinger, if any
            t.cancel()
        self._tasks = [asyncio.create_task(self._reader(conn)), asyncio.create_task(self._pinger(conn))]
        return True

    def _fail(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        self.last_error = reason
        self._next_attempt = loop.time() + self._delay
        self._delay = min(self._delay * 2, self.backoff_max)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("worker unavailable: %s", reason)

    def route(self, rid: int) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._routes[rid] = q
        return q

    def unroute(self, rid: int) -> None:
        self._routes.pop(rid, None)

    async def send(self, msg: Message) -> None:
        if self.conn is None:
            raise ConnectionClosed("not connected")
        await self.conn.send(msg)

    async def _reader(self, conn: Connection) -> None:
        reason = "connection closed by the worker"
        try:
            while True:
                msg = await conn.recv()
                if isinstance(msg, Pong):
                    rtt = asyncio.get_running_loop().time() - msg.t
                    self.rtt = rtt if self.rtt is None else 0.8 * self.rtt + 0.2 * rtt
                    for q in self._routes.values():
                        q.put_nowait(("rtt", rtt))
                    continue
                if isinstance(msg, SessionStats):
                    self.session_stats[msg.rid] = msg
                    if self._stats_event is not None:
                        self._stats_event.set()
                    continue
                if isinstance(msg, Error) and msg.rid < 0:
                    reason = f"worker error: {msg.message}"
                    break
                rid = getattr(msg, "rid", None)
                if rid is not None and rid in self._routes:
                    self._routes[rid].put_nowait(("msg", msg))
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            reason = f"protocol error from worker: {exc}"
        except Exception as exc:  # pragma: no cover - defensive: never leave requests hanging
            reason = f"worker link failed: {exc!r}"
        await self._lost(conn, reason)

    async def _pinger(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not conn.closed:
                await conn.send(Ping(loop.time(), next(self._ping_seq)))
                await asyncio.sleep(self.ping_interval)
        except ConnectionClosed:
            pass

    async def _lost(self, conn: Connection, reason: str) -> None:
        if self.conn is not conn:  # an old connection: its requests were already told
            return
        self.conn = None
        self._fail(reason)
        for q in self._routes.values():
            q.put_nowait(("lost", reason))
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
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


class RemoteEngine:
    """Target at this site, drafts from a worker; optional local draft for redundancy/fallback."""

    def __init__(self, target: CausalLM, link: WorkerLink | None, *,
                 local_draft: CausalLM | None = None, timing: TimingConfig | None = None,
                 config: ControllerConfig | None = None,
                 rtt_prior_s: float = 0.05) -> None:
        if local_draft is not None:
            check_compatible(target.tokenizer, local_draft.tokenizer,
                             target_name=str(target.path), draft_name=str(local_draft.path))
        self.target = target
        self.local_draft = local_draft
        self.link = link
        self.timing = timing or TimingConfig()
        config = config or ControllerConfig()
        if self.timing.target is not None and not config.verify_per_token_s:
            config = dataclasses.replace(
                config, verify_per_token_s=self.timing.target.per_token_ms / 1000.0)
        self.config = config
        self.rtt_prior_s = rtt_prior_s
        self._rids = itertools.count(1)
        self.device = Device(Site.CONTROLLER.value)

    @staticmethod
    def hello_for(target: CausalLM) -> Hello:
        return Hello(version=PROTOCOL_VERSION, role="controller", model=target.name,
                     tokenizer=tokenizer_fingerprint(target.tokenizer),
                     vocab_size=target.vocab_size, capabilities=("drafts", "entropy"))

    def _estimates(self) -> LinkEstimates:
        t = self.timing
        target_s = t.target.seconds(1) if t.target else 0.03
        draft_s = t.draft.seconds(1) if t.draft else 0.004
        rtt = self.link.rtt if self.link is not None and self.link.rtt is not None else self.rtt_prior_s
        return LinkEstimates.with_priors(rtt, target_s, draft_s)

    async def agenerate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 64,
        sampling: SamplingParams | None = None,
        stop_strings: Sequence[str] = (),
        ignore_eos: bool = False,
        on_tokens: OnTokens | None = None,
    ) -> GenerationResult:
        sampling = sampling or SamplingParams()
        ids = self.target.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise WanspecError("the prompt is empty after tokenization")
        fits = getattr(self.target, "check_fits", None)  # duck-typed models may lack it
        if fits is not None:
            fits(len(ids), max_tokens)
        stop = StopCriteria(max_tokens=max_tokens,
                            eos_ids=frozenset() if ignore_eos else self.target.eos_ids,
                            stop_strings=tuple(stop_strings),
                            detokenize=self.target.decode if stop_strings else None)
        rid = next(self._rids)
        worker_ok = self.link is not None and await self.link.ensure()
        core = ControllerCore(rid, ids, stop, sampling, self.config,
                              has_local_draft=self.local_draft is not None,
                              use_worker=worker_ok, estimates=self._estimates())
        busy0, passes0 = self.device.stats.busy_s, self.device.stats.passes
        compute0 = self.device.stats.compute_s
        queue: asyncio.Queue[Any] = self.link.route(rid) if worker_ok and self.link else asyncio.Queue()
        try:
            reason = await self._drive(core, queue, sampling, on_tokens)
        finally:
            if self.link is not None:
                self.link.unroute(rid)
        out = core.transcript.output
        metrics = core.metrics.to_dict()
        st = core.stats
        metrics.update({
            "remote_windows": st.remote_windows, "local_windows": st.local_windows,
            "plain_steps": st.plain_steps, "remote_drafts_received": st.remote_received,
            "remote_drafts_accepted": st.remote_accepted,
            "wasted_remote_drafts": max(st.remote_received - st.remote_accepted, 0),
            "stall_s": st.stall_s, "worker_lost": st.worker_lost,
            "worker_used": worker_ok, "request_id": rid,
        })
        return GenerationResult(
            text=self.target.decode(out), token_ids=out, prompt_tokens=len(ids),
            finish_reason=reason, mode="remote", metrics=metrics,
            devices={self.device.name: {"passes": self.device.stats.passes - passes0,
                                        "busy_s": self.device.stats.busy_s - busy0,
                                        "compute_s": self.device.stats.compute_s - compute0,
                                        "passes_by_model": dict(self.device.stats.by_model)}},
            timing=self.timing.describe(),
            token_gaps=list(core.metrics.token_gaps),
        )

    async def _drive(self, core: ControllerCore, queue: asyncio.Queue[Any],
                     sampling: SamplingParams, on_tokens: OnTokens | None) -> str:
        loop = asyncio.get_running_loop()
        target = PlacedModel(self.target, self.device, self.timing.target, "target")
        local = (PlacedModel(self.local_draft, self.device, self.timing.draft, "local-draft")
                 if self.local_draft is not None else None)
        t_cache = self.target.new_cache()
        l_cache = self.local_draft.new_cache() if self.local_draft is not None else None
        task: asyncio.Task[Any] | None = None

        async def run_target(a: RunTarget) -> None:
            queue.put_nowait(("target", await target.run_target(t_cache, a, sampling)))

        async def run_local(a: RunDraft) -> None:
            assert local is not None and l_cache is not None
            queue.put_nowait(("draft", await local.run_draft(l_cache, a, sampling)))

        actions = core.start(loop.time())
        try:
            while True:
                for a in actions:
                    if isinstance(a, RunTarget):
                        task = asyncio.create_task(run_target(a))
                    elif isinstance(a, RunDraft):
                        task = asyncio.create_task(run_local(a))
                    elif isinstance(a, SendToWorker):
                        if core.worker_ok and self.link is not None:
                            try:
                                await self.link.send(a.msg)
                            except ConnectionClosed:
                                queue.put_nowait(("lost", "connection to the worker closed"))
                    elif isinstance(a, EmitTokens):
                        if on_tokens is not None:
                            on_tokens(a.tokens)
                    elif isinstance(a, Log):
                        log.warning("request %d: %s", core.rid, a.message)
                    elif isinstance(a, Finished):
                        return a.reason
                deadline = core.next_timer()
                try:
                    if deadline is None:
                        kind, payload = await queue.get()
                    else:
                        kind, payload = await asyncio.wait_for(
                            queue.get(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    # asyncio may wake a timer up to its clock resolution early: it fired at
                    # its deadline as far as the state machine is concerned
                    actions = core.on_timer(max(loop.time(), deadline))
                    continue
                now = loop.time()
                if kind == "target":
                    assert isinstance(payload, TargetDone)
                    actions = core.on_target_done(payload, now)
                elif kind == "draft":
                    assert isinstance(payload, DraftDone)
                    actions = core.on_draft_done(payload, now)
                elif kind == "msg" and isinstance(payload, Error):
                    actions = core.on_worker_lost(f"worker refused the request: {payload.message}", now)
                elif kind == "msg":
                    actions = core.on_message(payload, now)
                elif kind == "rtt":
                    core.on_rtt_sample(payload)
                    actions = []
                elif kind == "lost":
                    actions = core.on_worker_lost(payload, now)
                else:  # pragma: no cover
                    actions = []
        finally:
            if task is not None and not task.done():
                task.cancel()
