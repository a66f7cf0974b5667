"""The controller adapter: target (+ optional local draft) here, drafts from a remote worker.

:class:`~wanspec.runtime.worker_link.WorkerLink` runs the connection to each worker.
:class:`RemoteEngine` runs one :class:`~wanspec.core.controller.ControllerCore` per request.  Any worker trouble -- unreachable,
wrong protocol or tokenizer, dying mid-request -- turns into ``on_worker_lost``: the request
completes with identical output by local SD or target-only decoding, and the reason is logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    Log,
    RunDraft,
    RunTarget,
    Send,
    Site,
    TargetDone,
    WorkerLost,
)
from wanspec.core.admission import Admission
from wanspec.core.batcher import BatchLimits, PassKind
from wanspec.core.controller import ControllerConfig, ControllerCore, ControllerStats
from wanspec.core.estimates import Estimates
from wanspec.core.stopping import StopCriteria
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.fingerprint import check_compatible, tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import BUNDLES, Cancel, Hello
from wanspec.runtime.busy import SharedAccelerator
from wanspec.runtime.engine import GenerationResult, TimingConfig
from wanspec.runtime.local import OnTokens
from wanspec.runtime.placed import PlacedModel
from wanspec.runtime.worker_link import WorkerLink
from wanspec.runtime.workers import WorkerPool
from wanspec.sampling import SamplingParams
from wanspec.timing.device import Device
from wanspec.transport.base import ConnectionClosed

log = logging.getLogger("wanspec.controller")

__all__ = ["RemoteEngine", "WorkerLink"]  # (WorkerLink: where callers have always found it)

@dataclass(slots=True)
class _Moved:
    """Event: the request, having lost its worker, was placed on worker ``index``."""

    index: int


@dataclass(slots=True)
class _Placement:
    """Which worker a request uses now (None: none), the ones it lost, the last it used, and
    the worker drafts it received and accepted from each (a request may move)."""

    index: int | None
    tried: set[int] = field(default_factory=set)
    last: int | None = None
    drafts: dict[int, list[int]] = field(default_factory=dict)  # worker: [received, accepted]
    _mark: tuple[int, int] = (0, 0)  # the request's totals when its current worker took it

    def __post_init__(self) -> None:
        self.last = self.index

    def attach(self, index: int, stats: ControllerStats) -> None:
        self.index = self.last = index
        self._mark = (stats.remote_received, stats.remote_accepted)

    def settle(self, stats: ControllerStats) -> None:
        """Credit the current worker with the drafts received and accepted since it took over."""
        if self.index is None:
            return
        counts = self.drafts.setdefault(self.index, [0, 0])
        counts[0] += stats.remote_received - self._mark[0]
        counts[1] += stats.remote_accepted - self._mark[1]
        self._mark = (stats.remote_received, stats.remote_accepted)


class RemoteEngine:
    """Target at this site, drafts from a worker (or the best of several); optional local draft
    for redundancy and fallback."""

    def __init__(self, target: CausalLM, link: WorkerLink | Sequence[WorkerLink] | None, *,
                 local_draft: CausalLM | None = None, timing: TimingConfig | None = None,
                 config: ControllerConfig | None = None, limits: BatchLimits | None = None,
                 admission: Admission | None = None) -> None:
        if local_draft is not None:
            check_compatible(target.tokenizer, local_draft.tokenizer,
                             target_name=str(target.path), draft_name=str(local_draft.path))
        self.target = target
        self.local_draft = local_draft
        links = [] if link is None else [link] if isinstance(link, WorkerLink) else list(link)
        self.link = links[0] if links else None  # (the first worker: the one, usually)
        self.timing = timing or TimingConfig()
        self.config = config or ControllerConfig()
        self._rids = itertools.count(1)
        self._warned: set[str] = set()  # request notices already logged as warnings
        self.device = Device(Site.CONTROLLER.value)
        # every request's verifications, plain steps and local drafts share the busy accelerator's
        # passes: concurrent requests are served by continuous batching (one alone runs as before)
        self.accelerator = SharedAccelerator(
            PlacedModel(target, self.device, self.timing.target, "target"),
            PlacedModel(local_draft, self.device, self.timing.draft, "local-draft")
            if local_draft is not None else None, limits, admission)
        self.accelerator.on_pass = self._on_pass
        # what the controller learns (RTT, pass times, acceptance) carries over between requests
        t = self.timing
        self.estimates = Estimates.with_priors(
            target_s=t.target.seconds(1) if t.target else 0.03,
            draft_s=t.draft.seconds(1) if t.draft else 0.004,
            verify_per_token_s=t.target.per_token_ms / 1000.0 if t.target else 0.0,
            rtt=self.link.core.rtt if len(links) == 1 else None,
            worker_demand=self.link.core.worker_demand if len(links) == 1 else None)
        self.workers = WorkerPool(links, self.estimates) if links else None

    def _log_once(self, rid: int, message: str) -> None:
        """A request's notice (e.g. losing its worker) as a warning the first time its words are
        seen, then at info level: a burst of refused requests is one warning, not thousands."""
        if message in self._warned:
            log.info("request %d: %s", rid, message)
            return
        if len(self._warned) >= 256:
            self._warned.clear()
        self._warned.add(message)
        log.warning("request %d: %s (further requests with the same notice are logged at info "
                    "level)", rid, message)

    def _on_pass(self, kind: PassKind, requests: int, longest: int) -> None:
        """How full the busy accelerator's passes are: what a draft pass or a longer window
        costs the other requests."""
        self.estimates.observe_busy_pass(kind is PassKind.TARGET, requests, longest)

    def _branches_on(self, index: int | None) -> int:
        """The branch lanes a request may ask of worker ``index``: the configured number, or
        none if that worker's Hello does not announce draft trees (an older worker)."""
        if index is None or self.workers is None:
            return self.config.branches
        hello = self.workers.links[index].peer_hello
        if hello is None or "branches" not in hello.capabilities:
            return 0
        return self.config.branches

    @staticmethod
    def hello_for(target: CausalLM) -> Hello:
        return Hello(version=PROTOCOL_VERSION, role="controller", model=target.name,
                     tokenizer=tokenizer_fingerprint(target.tokenizer),
                     vocab_size=target.vocab_size,
                     capabilities=("drafts", "entropy", "branches", BUNDLES))

    async def agenerate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 64,
        sampling: SamplingParams | None = None,
        stop_strings: Sequence[str] = (),
        ignore_eos: bool = False,
        on_tokens: OnTokens | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> GenerationResult:
        """Decode one prompt (many may run at once: their passes are batched).  ``stop_token_ids``
        end the output like EOS (even with ``ignore_eos``).  Cancelling the call withdraws the
        request at once: its passes leave the queue, its KV slots go back, and its worker is told
        to free the session."""
        sampling = sampling or SamplingParams()
        ids = self.target.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise WanspecError("the prompt is empty after tokenization")
        fits = getattr(self.target, "check_fits", None)  # duck-typed models may lack it
        if fits is not None:
            fits(len(ids), max_tokens)
        eos = frozenset() if ignore_eos else self.target.eos_ids
        stop = StopCriteria(max_tokens=max_tokens, eos_ids=eos | frozenset(stop_token_ids),
                            stop_strings=tuple(stop_strings),
                            detokenize=self.target.decode if stop_strings else None)
        rid = next(self._rids)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        async with self.accelerator.admitted() as key:
            return await self._serve(rid, ids, stop, sampling,
                                     self.accelerator.reporting(key, on_tokens), arrived)

    async def _serve(self, rid: int, ids: list[int], stop: StopCriteria,
                     sampling: SamplingParams, on_tokens: OnTokens,
                     arrived: float) -> GenerationResult:
        """One admitted request: its state machine, driven until it finishes.  The time from
        ``arrived`` to its start (admission, connecting to the worker) is its ``queued_s``."""
        pool = self.workers
        placed = _Placement(await pool.place() if pool is not None else None)
        worker_used = placed.index is not None
        queued_s = asyncio.get_running_loop().time() - arrived
        core = ControllerCore(rid, ids, stop, sampling, self.config,
                              has_local_draft=self.local_draft is not None,
                              use_worker=worker_used,
                              estimates=(self.estimates if placed.index is None or pool is None
                                         else pool.estimates[placed.index]),
                              vocab_size=self.target.vocab_size)
        core.branches = self._branches_on(placed.index)
        device0 = self.device.stats.copy()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if placed.index is not None and pool is not None:
            pool.attach(placed.index, rid, queue)
        try:
            reason = await self._drive(core, queue, sampling, on_tokens, placed)
        except BaseException:  # cancelled (its client left) or failed: free the worker's session
            for a in core.on_abandoned():
                if isinstance(a, Send) and placed.index is not None and pool is not None:
                    pool.links[placed.index].send_soon(a.msg)
            raise
        finally:
            placed.settle(core.stats)
            worker_at_end = placed.index is not None
            if placed.index is not None and pool is not None:
                pool.detach(placed.index, rid)
        out = core.transcript.output
        metrics = core.metrics.to_dict()
        st = core.stats
        metrics.update({
            "remote_windows": st.remote_windows, "local_windows": st.local_windows,
            "plain_steps": st.plain_steps, "rides": st.rides,
            "remote_drafts_received": st.remote_received,
            "remote_drafts_accepted": st.remote_accepted,
            "remote_drafts_stale": st.remote_stale, "remote_drafts_late": st.remote_late,
            "wasted_remote_drafts": max(st.remote_received - st.remote_accepted, 0),
            "stall_s": st.stall_s, "worker_lost": st.worker_lost,
            "worker_used": worker_used, "request_id": rid, "queued_s": queued_s,
            "worker": pool.name(placed.last) if pool is not None and placed.last is not None
            else None,
            "worker_moves": st.worker_moves,
            "branch_hits": st.branch_hits,
            # did it finish with a worker (after moves, maybe), or by itself at the busy site
            "worker_at_end": worker_at_end,
            "remote_drafts_by_worker": {
                pool.name(i): {"received": r, "accepted": a}
                for i, (r, a) in placed.drafts.items()} if pool is not None else {},
        })
        return GenerationResult(
            text=self.target.decode(out), token_ids=out, prompt_tokens=len(ids),
            finish_reason=reason, mode="remote", metrics=metrics,
            devices={self.device.name: self.device.stats.report(since=device0)},
            timing=self.timing.describe(),
            token_gaps=list(core.metrics.token_gaps),
        )

    async def _drive(self, core: ControllerCore, queue: asyncio.Queue[Any],
                     sampling: SamplingParams, on_tokens: OnTokens | None,
                     placed: _Placement) -> str:
        """Execute the core's actions; feed it pass results, worker messages and timers.

        The queue carries typed events only: :class:`TargetDone` and :class:`DraftDone` from this
        site's passes, protocol messages routed by the worker's link, :class:`WorkerLost`, and
        :class:`_Moved` when the request was placed on another worker after losing its own.
        """
        loop = asyncio.get_running_loop()
        t_cache = self.target.new_cache()
        l_cache = self.local_draft.new_cache() if self.local_draft is not None else None
        tasks: set[asyncio.Task[Any]] = set()
        passes: set[asyncio.Future[Any]] = set()  # this request's queued or running passes

        def run_target(a: RunTarget) -> None:
            # queued now (not from a task), so a rider's pass joins the pass being formed
            fut = self.accelerator.enqueue(PassKind.TARGET, t_cache, a, sampling, owner=core)
            start(fut)

        def run_local(a: RunDraft) -> None:
            assert l_cache is not None
            start(self.accelerator.enqueue(PassKind.DRAFT, l_cache, a, sampling, owner=core,
                                           then_cache=t_cache))

        def start(fut: asyncio.Future[Any]) -> None:
            passes.add(fut)
            fut.add_done_callback(passes.discard)

            async def deliver() -> None:
                queue.put_nowait(await fut)

            task = asyncio.create_task(deliver())
            tasks.add(task)
            task.add_done_callback(done)

        def done(t: asyncio.Task[Any]) -> None:
            tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:  # a failed pass is a bug: surface it
                queue.put_nowait(t.exception())

        def offer(now: float) -> None:
            """Another request's target pass is leaving: the core may join it."""
            try:
                for a in core.on_pass_departing(now):
                    if not isinstance(a, RunTarget):
                        raise RuntimeError(f"a ride must be a target pass, not {a!r}")
                    run_target(a)
            except Exception as exc:  # this request's failure, surfaced in its own driver
                queue.put_nowait(exc)

        pool = self.workers

        async def place_again(exclude: frozenset[int]) -> None:
            assert pool is not None
            index = await pool.place(exclude)
            if index is not None:
                queue.put_nowait(_Moved(index))

        rider = self.accelerator.add_rider(offer)
        actions = core.start(loop.time())
        try:
            while True:
                # the link (and its connection) of a worker just dropped: the core's Cancel of
                # the session goes out there, and only there
                farewell = None
                if placed.index is not None and not core.worker_ok and not core.finished:
                    # it lost its worker (failed, refused it, misbehaved): it goes on without
                    # one at once, and is placed again on another, if one is usable, when found
                    assert pool is not None
                    farewell = pool.links[placed.index], pool.links[placed.index].conn
                    placed.settle(core.stats)
                    pool.detach(placed.index, core.rid, lost=True)
                    placed.tried.add(placed.index)
                    placed.index = None
                    task = asyncio.create_task(place_again(frozenset(placed.tried)))
                    tasks.add(task)
                    task.add_done_callback(done)
                # the next passes first: queued, and on their way to the device, before the
                # host work of the last one (sending the commit, streaming tokens), which then
                # overlaps them rather than delaying them (the order of side effects only)
                for a in actions:
                    if isinstance(a, RunTarget):
                        run_target(a)
                    elif isinstance(a, RunDraft):
                        run_local(a)
                kinds = {type(a) for a in actions}
                if kinds & {RunTarget, RunDraft} and kinds & {Send, EmitTokens}:
                    await self.accelerator.handed_over()
                for a in actions:
                    if isinstance(a, (RunTarget, RunDraft)):
                        continue
                    if isinstance(a, Send):
                        if core.worker_ok and placed.index is not None and pool is not None:
                            try:
                                await pool.links[placed.index].send(a.msg)
                            except ConnectionClosed:
                                queue.put_nowait(WorkerLost("connection to the worker closed"))
                        elif farewell is not None and isinstance(a.msg, Cancel):
                            link, conn = farewell
                            if conn is not None:  # (a closed connection drops it)
                                link.send_soon(a.msg, on=conn)
                    elif isinstance(a, EmitTokens):
                        if on_tokens is not None:
                            on_tokens(a.tokens)
                    elif isinstance(a, Log):
                        self._log_once(core.rid, a.message)
                    elif isinstance(a, Finished):
                        return a.reason
                deadline = core.next_timer()
                try:
                    if deadline is None:
                        event = await queue.get()
                    else:
                        event = await asyncio.wait_for(queue.get(),
                                                       max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    # asyncio may wake a timer up to its clock resolution early: it fired at
                    # its deadline as far as the state machine is concerned
                    actions = core.on_timer(max(loop.time(), deadline))
                    continue
                now = loop.time()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, _Moved):
                    actions = []
                    if not core.worker_ok and not core.finished and pool is not None:
                        placed.attach(event.index, core.stats)
                        pool.attach(event.index, core.rid, queue)
                        core.branches = self._branches_on(event.index)
                        actions = core.on_worker_attached(now, pool.estimates[event.index])
                elif isinstance(event, (TargetDone, DraftDone, WorkerLost)):
                    actions = core.on_event(event, now)
                else:
                    actions = core.on_message(event, now)
        finally:
            self.accelerator.remove_rider(rider)
            for f in list(passes):  # withdrawn if waiting; a running pass skips the closed cache
                f.cancel()
            for t in list(tasks):
                t.cancel()
            t_cache.close()  # the slots go back now (or when a pass still using them ends)
            if l_cache is not None:
                l_cache.close()
