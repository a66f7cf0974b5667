"""One accelerator shared by many requests: their passes batched into shared forward passes.

Each request's driver runs as if it had the models to itself (it calls ``run_target`` and
``run_draft`` on a :class:`BatchedModel`, exactly as on a
:class:`~wanspec.runtime.placed.PlacedModel`).  Behind that, a :class:`SharedAccelerator` queues
every waiting pass in a sans-I/O :class:`~wanspec.core.batcher.Batcher` and, whenever the device
is free, runs the pass the batcher forms as one batched forward and hands each request its
result.  This is continuous batching: requests join and leave at any pass.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.core.batcher import Batcher, BatchLimits, PassKind
from wanspec.models.backend import KVCache
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams


@dataclass
class _Job:
    kind: PassKind
    cache: KVCache
    action: RunTarget | RunDraft
    sampling: SamplingParams
    future: asyncio.Future


@dataclass
class QueueStats:
    passes: int = 0
    sequences: int = 0
    queued_s: float = 0.0  # time passes waited between submission and the start of their pass

    @property
    def mean_batch(self) -> float:
        return self.sequences / self.passes if self.passes else 0.0


class SharedAccelerator:
    """A target and/or a draft on one device, passes batched across requests.

    The busy site holds both (verifications, plain steps and local drafts share its GPU); a
    worker holds only a draft (every session of every controller shares its drafting passes).
    """

    def __init__(self, target: PlacedModel | None, draft: PlacedModel | None = None,
                 limits: BatchLimits | None = None) -> None:
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

    async def submit(self, kind: PassKind, cache: KVCache, action: RunTarget | RunDraft,
                     sampling: SamplingParams) -> Any:
        loop = asyncio.get_running_loop()
        key = next(self._keys)
        job = _Job(kind, cache, action, sampling, loop.create_future())
        self._jobs[key] = job
        self.batcher.submit(key, kind, len(action.tokens), loop.time())
        if self._pump is None or self._pump.done():
            self._pump = loop.create_task(self._run())
        try:
            return await job.future
        finally:
            if not job.future.done():  # the request was cancelled while its pass waited
                self.batcher.withdraw(key)
            self._jobs.pop(key, None)

    async def _run(self) -> None:
        """Run passes while any wait.  Yielding once before forming a pass lets every driver
        woken by the last pass submit its next one, so they share it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0)
            p = self.batcher.next_pass()
            if p is None:
                return
            jobs = [self._jobs[k] for k in p.keys if k in self._jobs]
            jobs = [j for j in jobs if not j.future.done()]
            if not jobs:
                continue
            self.stats.passes += 1
            self.stats.sequences += len(jobs)
            self.stats.queued_s += sum(loop.time() - t for t in p.submitted)
            placed = self.models[p.kind]
            assert placed is not None
            items = [(j.cache, j.action, j.sampling) for j in jobs]
            try:
                if p.kind is PassKind.TARGET:
                    results: list[Any] = await placed.run_targets(items)  # type: ignore[arg-type]
                else:
                    results = await placed.run_drafts(items)  # type: ignore[arg-type]
            except Exception as exc:  # a failed pass fails its requests, not the accelerator
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, r in zip(jobs, results):
                if j.future.done():
                    continue  # cancelled meanwhile
                if r is None:
                    j.future.set_exception(RuntimeError("the request's KV cache was closed"))
                else:
                    j.future.set_result(r)


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

    async def run_draft(self, cache: KVCache, action: RunDraft,
                        sampling: SamplingParams) -> DraftDone:
        return await self.accelerator.submit(PassKind.DRAFT, cache, action, sampling)
