"""One accelerator shared by many requests: their passes batched into shared forward passes.

Each request's driver runs as if it had the models to itself (it calls ``run_target`` and
``run_draft`` on a :class:`BatchedModel`, exactly as on a
:class:`~wanspec.runtime.placed.PlacedModel`).  Behind that, a :class:`SharedAccelerator` queues
every waiting pass in a sans-I/O :class:`~wanspec.core.batcher.Batcher` and, whenever the device
is free, runs the pass the batcher forms as one batched forward and hands each request its
result.  This is continuous batching: requests join and leave at any pass.

Requests that are idle -- waiting for their worker's drafts -- can register as *riders*: just
before a target pass leaves, each rider is offered a seat (its state machine decides, see
:meth:`~wanspec.core.controller.ControllerCore.on_pass_departing`), so a request that would
otherwise wait joins a pass that runs anyway, at the cost of its own tokens only.

A draft round that promised its verification (``RunDraft.then_verify``) may have it started the
moment the round ends, before its request has seen the drafts (:class:`_EarlyVerify`, when the
batcher says so): the request that then asks for that very pass is handed its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.core.admission import Admission
from wanspec.core.batcher import Batcher, BatchLimits, PassKind
from wanspec.core.rounds import round_shapes
from wanspec.models.backend import KVCache
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing import clock


log = logging.getLogger("wanspec.accelerator")
SETTLE_MAX_YIELDS = 32  # bound on the loop turns a pass waits for its requests to react


@dataclass
class _Job:
    kind: PassKind
    cache: KVCache
    action: RunTarget | RunDraft
    sampling: SamplingParams
    future: asyncio.Future
    source: KVCache | None = None  # a draft pass's fork: the cache its cache copies a prefix of
    owner: object = None  # the request it is for (the same for all its caches)
    then_cache: KVCache | None = None  # a draft round's: its request's target cache, where the
    # verification it promises (RunDraft.then_verify) runs


@dataclass
class _EarlyVerify:
    """Verifications started as their draft rounds ended, before their requests asked for them
    (``RunDraft.then_verify``).  A request that then queues the same pass (same cache, start,
    feed) gets this one's result instead of a pass of its own; one that queues anything else
    goes through the batcher as usual, and the early pass was wasted time, never a wrong token
    (the request's cache is cut back to its next pass's start either way)."""

    jobs: list[_Job]
    claims: dict[int, tuple[asyncio.Future, int, float]] = field(default_factory=dict)  # job
    # index -> (the asking request's future, its op, when it asked)
    started: float | None = None  # loop time the pass started
    results: list[Any] | None = None  # once the pass ended
    error: BaseException | None = None

    def claim(self, cache: KVCache, action: RunTarget, sampling: SamplingParams
              ) -> asyncio.Future | None:
        """The future for ``action`` if it is one of these passes (then it runs no other)."""
        for i, j in enumerate(self.jobs):
            a = j.action
            if (i not in self.claims and j.cache is cache and a.start == action.start
                    and a.tokens == action.tokens and a.want == action.want
                    and j.sampling == sampling):
                loop = asyncio.get_running_loop()
                fut = loop.create_future()
                self.claims[i] = (fut, action.op, loop.time())
                if self.results is not None or self.error is not None:
                    self._deliver(i)
                return fut
        return None

    def finish(self, results: list[Any] | None, error: BaseException | None = None) -> None:
        self.results, self.error = results, error
        for i in self.claims:
            self._deliver(i)

    def _deliver(self, i: int) -> None:
        fut, op, asked = self.claims[i]
        if fut.done():
            return  # the request left
        r = None if self.results is None else self.results[i]
        if self.error is not None:
            fut.set_exception(self.error)
        elif r is None:
            fut.set_exception(RuntimeError("the request's KV cache was closed"))
        else:
            head_start = max(asked - self.started, 0.0) if self.started is not None else 0.0
            fut.set_result(TargetDone(op, r.choices, head_start))


@dataclass
class QueueStats:
    passes: int = 0
    sequences: int = 0
    queued_s: float = 0.0  # time passes waited between submission and the start of their pass
    early: int = 0  # verifications started as their rounds ended (RunDraft.then_verify)
    early_unclaimed: int = 0  # of those, asked for by no request (wasted; a promise broken)

    @property
    def mean_batch(self) -> float:
        return self.sequences / self.passes if self.passes else 0.0


class SharedAccelerator:
    """A target and/or a draft on one device, passes batched across requests.

    The busy site holds both (verifications, plain steps and local drafts share its GPU); a
    worker holds only a draft (every session of every controller shares its drafting passes).
    """

    def __init__(self, target: PlacedModel | None, draft: PlacedModel | None = None,
                 limits: BatchLimits | None = None, admission: Admission | None = None) -> None:
        if target is None and draft is None:
            raise ValueError("an accelerator holds at least one model")
        if target is not None and draft is not None and draft.device is not target.device:
            raise ValueError("the target and the draft of one accelerator share its device")
        self.models = {PassKind.TARGET: target, PassKind.DRAFT: draft}
        self.batcher = Batcher(limits or BatchLimits())
        self.stats = QueueStats()
        self._jobs: dict[int, _Job] = {}
        self._keys = itertools.count()
        self._pump: asyncio.Task | None = None
        self._riders: dict[int, Callable[[float], None]] = {}
        # told of every pass: (kind, requests carried, longest feed in tokens)
        self.on_pass: Callable[[PassKind, int, int], None] | None = None
        self.admission = admission or Admission(None)  # default: everyone runs at once
        # told after every pass: (kind, requests carried, longest feed in tokens, seconds it
        # took from its start to its results, as the requests waited for it); a local draft
        # round (RunDraft.count) is told once, as the one call to the device it is (only a
        # worker listens, and a worker's passes are never rounds)
        self.on_pass_done: Callable[[PassKind, int, int, float], None] | None = None
        self._admitted: dict[int, asyncio.Event] = {}
        self._running = False  # a pass is on the device
        self._handoffs: list[asyncio.Future[None]] = []  # waiting in handed_over()
        self._last_owners: set[object] = set()  # the requests the last pass carried (held for
        # one pass, so that no new request can be mistaken for one of them)
        self._last_end: float | None = None  # loop time the last pass ended (None: the pump
        # went idle since)
        self._early: _EarlyVerify | None = None  # verifications started before they were asked

    @property
    def device(self):
        placed = self.models[PassKind.TARGET] or self.models[PassKind.DRAFT]
        assert placed is not None
        return placed.device

    def model(self, kind: PassKind) -> "BatchedModel":
        placed = self.models[kind]
        if placed is None:
            raise ValueError(f"this accelerator has no {kind.value} model")
        return BatchedModel(self, kind, placed)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[int]:
        """Wait until the admission policy lets this request start (first come, first served);
        yields its key for :meth:`committed`.  Leaving the block frees its place."""
        key = next(self._keys)
        event = self._admitted[key] = asyncio.Event()
        self.admission.arrive(key)
        self._admit()
        try:
            await event.wait()
            yield key
        finally:
            self._admitted.pop(key, None)
            self.admission.leave(key)
            self._admit()

    def committed(self, key: int, tokens: int) -> None:
        """Request ``key`` committed ``tokens`` (what admission learns TPOT from)."""
        self.admission.on_commit(key, tokens, asyncio.get_running_loop().time())

    def reporting(self, key: int, on_tokens: Callable[[Sequence[int]], None] | None
                  ) -> Callable[[Sequence[int]], None]:
        """A request's token callback that also tells admission what it committed."""
        def report(tokens: Sequence[int]) -> None:
            self.committed(key, len(tokens))
            if on_tokens is not None:
                on_tokens(tokens)

        return report

    def _admit(self) -> None:
        for key in self.admission.admit():
            event = self._admitted.get(key)
            if event is not None:
                event.set()

    def add_rider(self, offer: Callable[[float], None]) -> int:
        """Call ``offer(now)`` before every target pass leaves (until :meth:`remove_rider`);
        ``offer`` may :meth:`enqueue` a target pass, which then joins the leaving one."""
        key = next(self._keys)
        self._riders[key] = offer
        return key

    def remove_rider(self, key: int) -> None:
        self._riders.pop(key, None)

    def enqueue(self, kind: PassKind, cache: KVCache, action: RunTarget | RunDraft,
                sampling: SamplingParams, source: KVCache | None = None,
                owner: object = None, then_cache: KVCache | None = None) -> asyncio.Future:
        """Queue a pass now (synchronously: a rider's pass joins the pass being formed); the
        future gets its result.  Cancelling the future withdraws the pass if it has not run.

        ``source`` (draft passes only): ``cache`` first takes ``source``'s first
        ``action.start`` positions (:class:`~wanspec.models.backend.Feed`).  ``then_cache``
        (a draft round whose verification is decided, ``RunDraft.then_verify``): the target
        cache that verification runs on, so that it may start as the round ends
        (:meth:`~wanspec.core.batcher.Batcher.verify_at_once`)."""
        if source is not None and kind is not PassKind.DRAFT:
            raise ValueError("only a draft pass forks a KV cache")
        if kind is PassKind.TARGET and self._early is not None:
            assert isinstance(action, RunTarget)
            early = self._early.claim(cache, action, sampling)
            if early is not None:
                return early  # started already: the request's own pass, as it asked for it
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        job = _Job(kind, cache, action, sampling, loop.create_future(), source,
                   cache if owner is None else owner, then_cache)
        self._jobs[key] = job
        self.batcher.submit(key, kind, len(action.tokens), loop.time())

        def forget(_: asyncio.Future) -> None:
            self.batcher.withdraw(key)  # a no-op once the pass has been formed
            self._jobs.pop(key, None)

        job.future.add_done_callback(forget)
        if self._pump is None or self._pump.done():
            self._pump = loop.create_task(self._run())
        return job.future

    @property
    def running(self) -> bool:
        """Whether a pass has been formed and not yet ended (on the device, or about to take
        it)."""
        return self._running

    async def handed_over(self) -> None:
        """Return once the pump has formed the next pass and sent it to the device (the
        caller's own pass is in it unless it did not fit: drafts go first, and a pass takes at
        most its limits).

        Why: a request's host work after a pass (sending the commit or the drafts, streaming
        tokens) need not come before its next pass.  Done first, it delays that pass while the
        device idles; done after this, it overlaps the pass (what vLLM's async scheduling does
        with a step's output processing).  If a pass is running, at once: the queued passes
        wait for it anyway, and the host work overlaps it.  Never longer than the pump takes to
        form the next pass (a few turns of the loop)."""
        if self._running or not self.batcher.waiting or self._pump is None or self._pump.done():
            return
        fut = asyncio.get_running_loop().create_future()
        self._handoffs.append(fut)
        await fut

    def _hand_over(self) -> None:
        """The pass just formed is leaving for the device (or none will): wake handed_over()."""
        handoffs, self._handoffs = self._handoffs, []
        for fut in handoffs:
            if not fut.done():
                fut.set_result(None)

    async def submit(self, kind: PassKind, cache: KVCache, action: RunTarget | RunDraft,
                     sampling: SamplingParams, source: KVCache | None = None) -> Any:
        return await self.enqueue(kind, cache, action, sampling, source)

    async def _settle(self) -> None:
        """Let every driver woken by the last pass react before the next pass is formed.

        A result reaches a request's state machine through a few hops of the event loop (a
        future, a queue, a timeout wrapper) before its next pass is queued; forming the next pass
        at the first chance would split the requests into cohorts taking turns, each pass half
        full.  So yield until the queue has stopped growing for two turns of the loop (on the
        virtual clock this takes no time; on a real one, microseconds).
        """
        waiting, quiet = -1, 0
        shortcut = clock.host_counts()  # (on the virtual clock waiting is free, and the rule
        # then stays the simulator's: the pass forms after every other event of the instant)
        for _ in range(SETTLE_MAX_YIELDS):
            await asyncio.sleep(0)
            if shortcut and self._last_owners and self._last_owners <= {
                    j.owner for j in self._jobs.values()}:
                return  # every request of the last pass has queued its next: none to wait for
            quiet = quiet + 1 if self.batcher.waiting == waiting else 0
            waiting = self.batcher.waiting
            if quiet >= 2:
                return

    async def _run(self) -> None:
        """Run passes while any wait.  Whatever happens here -- a rider's or an observer's
        callback failing, the pump itself cancelled -- no request is left waiting: a failure is
        its own request's (or the pass's) error, and if the pump ends abnormally every pass still
        waiting fails with it."""
        try:
            while await self._one_pass():
                self._hand_over()
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RuntimeError("the accelerator stopped")
            for key, job in list(self._jobs.items()):
                self.batcher.withdraw(key)
                if not job.future.done():
                    job.future.set_exception(error)
            early, self._early = self._early, None
            if early is not None and early.results is None and early.error is None:
                early.finish(None, error)
            raise
        finally:
            self._running = False
            self._last_end = None  # (the pump stops: nothing queued went on at once)
            self._last_owners = set()
            self._hand_over()

    def _offer_seats(self, now: float) -> None:
        """A target pass is about to leave: each rider may join while it has seats."""
        for key, offer in list(self._riders.items()):
            if not self.batcher.seats_left(PassKind.TARGET):
                return
            try:
                offer(now)
            except Exception:  # that request's bug: it leaves the riders, the pass goes on
                self._riders.pop(key, None)
                log.exception("a request failed while offered a seat")

    async def _one_pass(self) -> bool:
        """Form and run the next pass, once the last one's requests have reacted; False when
        nothing waits."""
        loop = asyncio.get_running_loop()
        early = self._early
        if early is not None and early.results is None and early.error is None:
            await self._run_pass(PassKind.TARGET, early.jobs, [loop.time()] * len(early.jobs),
                                 early)
            return True
        await self._settle()
        if early is not None:  # its requests have queued their next passes since it ended
            self.stats.early_unclaimed += len(early.jobs) - len(early.claims)
            self._early = None
        if self.batcher.next_kind() is PassKind.TARGET:
            self._offer_seats(loop.time())
        p = self.batcher.next_pass()
        if p is None:
            return False
        jobs = [self._jobs[k] for k in p.keys if k in self._jobs]
        jobs = [j for j in jobs if not j.future.done()]
        if jobs:
            await self._run_pass(p.kind, jobs, p.submitted)
        return True

    async def _run_pass(self, kind: PassKind, jobs: list[_Job], submitted: Sequence[float],
                        early: _EarlyVerify | None = None) -> None:
        """Run one pass carrying ``jobs`` and hand each its result (``early``: the
        verifications started before they were asked, whose results go to their claims)."""
        loop = asyncio.get_running_loop()
        # a local draft round (RunDraft.count) runs its later passes in the same call, each
        # carrying the rounds still drafting, a token each
        later = ([len(feeds) for feeds in round_shapes([j.action for j in jobs])[1:]]
                 if kind is PassKind.DRAFT else [])
        self.stats.passes += 1 + len(later)
        self.stats.sequences += len(jobs) + sum(later)
        self.stats.queued_s += sum(loop.time() - t for t in submitted)
        if self.on_pass is not None:
            try:
                self.on_pass(kind, len(jobs), max(len(j.action.tokens) for j in jobs))
                for requests in later:
                    self.on_pass(kind, requests, 1)
            except Exception:  # an observer's failure is not the pass's
                log.exception("the pass observer failed")
        placed = self.models[kind]
        assert placed is not None
        started = loop.time()
        if early is not None:
            early.started = started
        if self._last_end is not None and any(j.owner in self._last_owners for j in jobs):
            stats = placed.device.stats  # a request of the last pass went on before the pump
            stats.turnarounds += 1  # went idle: the device idled while the host reacted
            stats.turnaround_s += started - self._last_end
        self._last_owners = {j.owner for j in jobs}
        self._running = True
        self._hand_over()  # (the waiters run once the pass below is on its way)
        try:
            if kind is PassKind.TARGET:
                results: list[Any] = await placed.run_targets(
                    [(j.cache, j.action, j.sampling) for j in jobs])  # type: ignore[misc]
            else:
                results = await placed.run_drafts(
                    [(j.cache, j.action, j.sampling, j.source) for j in jobs])  # type: ignore[misc]
        except Exception as exc:  # a failed pass fails its requests, not the accelerator
            if early is not None:
                early.finish(None, exc)
                return
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        finally:
            self._running = False
            self._last_end = loop.time()
        tokens, seconds = sum(len(j.action.tokens) for j in jobs), loop.time() - started
        if self.on_pass_done is not None:
            try:
                self.on_pass_done(kind, len(jobs), max(len(j.action.tokens) for j in jobs),
                                  seconds)
            except Exception:  # an observer's failure is not the pass's
                log.exception("the pass observer failed")
        if kind is PassKind.TARGET:
            self.admission.on_pass(tokens, seconds)
            self._admit()
        if early is not None:
            early.finish(results)
            return
        if kind is PassKind.DRAFT:
            self._early = self._early_verifications(jobs, results)
        for j, r in zip(jobs, results):
            if j.future.done():
                continue  # cancelled meanwhile
            if r is None:
                j.future.set_exception(RuntimeError("the request's KV cache was closed"))
            else:
                j.future.set_result(r)

    def _early_verifications(self, jobs: list[_Job], results: list[Any]
                             ) -> _EarlyVerify | None:
        """The verifications a draft pass's rounds promised, to start as the next pass now,
        if the batcher says so (:meth:`~wanspec.core.batcher.Batcher.verify_at_once`)."""
        promised = [(j, r) for j, r in zip(jobs, results) if r is not None
                    and isinstance(j.action, RunDraft) and j.action.then_verify is not None
                    and j.then_cache is not None and not j.future.done()]
        verifications = [j.action.then_verify.action(-1, r) for j, r in promised]
        live = sum(1 for admitted in self._admitted.values() if admitted.is_set())
        if not self.batcher.verify_at_once(len(jobs), len(promised), live,
                                           sum(len(v.tokens) for v in verifications)):
            return None
        self.stats.early += len(promised)
        # each job's future is its round's, done (the claims get the results); its owner is
        # the one the request's own pass would have (enqueue's default: its cache)
        return _EarlyVerify([
            _Job(PassKind.TARGET, j.then_cache, v, j.sampling, j.future,
                 owner=j.then_cache if j.owner is j.cache else j.owner)
            for (j, _), v in zip(promised, verifications)])


@dataclass
class BatchedModel:
    """What a request's driver holds: a model whose passes go through the shared accelerator."""

    accelerator: SharedAccelerator
    kind: PassKind
    placed: PlacedModel
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = self.placed.label

    @property
    def lm(self):
        return self.placed.lm

    @property
    def device(self):
        return self.placed.device

    async def run_target(self, cache: KVCache, action: RunTarget,
                         sampling: SamplingParams) -> TargetDone:
        return await self.accelerator.submit(PassKind.TARGET, cache, action, sampling)

    async def run_draft(self, cache: KVCache, action: RunDraft, sampling: SamplingParams,
                        source: KVCache | None = None, then_cache: KVCache | None = None
                        ) -> DraftDone:
        """A draft pass; with ``source``, ``cache`` first takes ``source``'s first
        ``action.start`` positions (a fork, see :class:`~wanspec.models.backend.Feed`);
        ``then_cache``: see :meth:`SharedAccelerator.enqueue`."""
        return await self.accelerator.enqueue(PassKind.DRAFT, cache, action, sampling, source,
                                              then_cache=then_cache)
