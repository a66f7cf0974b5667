"""A model placed on a device with a timing rule: the only way the runtime runs a forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.core.rounds import RoundFeed, run_rounds
from wanspec.models.backend import CausalLM, Feed, KVCache
from wanspec.sampling import SamplingParams, choose_tokens, draft_choice
from wanspec.timing.device import Device, PassCost, pass_shape, round_pass_shapes


def _shape(items: list) -> dict[str, Any]:
    """The keyword arguments of :meth:`Device.run` for a batch's actions: the shape of its pass
    (:func:`~wanspec.timing.device.pass_shape`) and, for draft rounds (``RunDraft.count``), the
    shapes of the round's later passes (``more``).

    A fork's KV copy (a draft pass with a source cache) is not in it: a device-memory copy of a
    prefix's keys and values, negligible next to a pass, so a pass costs the same with or without
    one."""
    actions = [item[1] for item in items]
    if not any(isinstance(a, RunDraft) and a.count > 1 for a in actions):
        return pass_shape(actions)
    first, *more = round_pass_shapes(actions)
    return {**first, "more": more}


@dataclass
class PlacedModel:
    """``lm`` running on ``device``; ``cost`` None means measured timing, else emulated."""

    lm: CausalLM
    device: Device
    cost: PassCost | None
    label: str

    async def run_target(self, cache: KVCache, action: RunTarget,
                         sampling: SamplingParams) -> TargetDone:
        n = len(action.tokens)
        first = action.start + n - action.want + 1  # absolute position of the first wanted choice

        def work() -> tuple[int, ...]:
            logits = self.lm.forward(cache, action.start, action.tokens)
            rows = logits[n - action.want :]
            return tuple(choose_tokens(rows, range(first, first + action.want), sampling))

        choices = await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                        label=self.label, **pass_shape([action]))
        return TargetDone(action.op, choices)

    async def run_draft(self, cache: KVCache, action: RunDraft, sampling: SamplingParams,
                        source: KVCache | None = None, then_cache: KVCache | None = None
                        ) -> DraftDone:
        """One draft pass (or round: ``action.count``); with ``source``, ``cache`` first takes
        ``source``'s first ``action.start`` positions (:class:`~wanspec.models.backend.Feed`).
        The pass's emulated cost is the same either way (the copy is negligible next to a pass,
        see :func:`_shape`).  ``then_cache`` is for a shared accelerator, which may start a
        round's promised verification early (:meth:`~wanspec.runtime.busy.SharedAccelerator.
        enqueue`); a model with a device of its own runs each pass when asked."""
        done = await self.run_drafts([(cache, action, sampling, source)], skip_closed=False)
        assert done[0] is not None
        return done[0]

    async def run_targets(self, items: list[tuple[KVCache, RunTarget, SamplingParams]]
                          ) -> list[TargetDone | None]:
        """Many requests' target passes as one forward pass (continuous batching); ``None`` for
        a request whose cache was closed (it left) before the pass ran."""
        def work() -> list[TargetDone | None]:
            feeds = [Feed(cache, a.start, a.tokens) for cache, a, _ in items]
            out: list[TargetDone | None] = []
            for logits, (_, a, sampling) in zip(self.lm.forward_batch(feeds, skip_closed=True),
                                                items):
                if logits is None:  # that request was cancelled while its pass waited
                    out.append(None)
                    continue
                n = len(a.tokens)
                first = a.start + n - a.want + 1
                rows = logits[n - a.want :]
                out.append(TargetDone(a.op, tuple(choose_tokens(rows, range(first, first + a.want),
                                                                sampling))))
            return out

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     label=self.label, **_shape(items))

    async def run_drafts(self, items: list[tuple[KVCache, RunDraft, SamplingParams,
                                                  KVCache | None]], *, skip_closed: bool = True
                         ) -> list[DraftDone | None]:
        """Many requests' draft passes as one forward pass (``None`` as in :meth:`run_targets`,
        also for a fork whose source cache was closed); an item's last element is the cache
        its cache forks off (``Feed.source``), or None.  Rounds (``RunDraft.count`` > 1) go on
        pass after pass in the same call, without a return to the event loop, each later pass
        carrying the rounds not finished (:func:`~wanspec.core.rounds.run_rounds`)."""
        actions = [a for _, a, _, _ in items]

        def one_pass(step: int, feeds: list[RoundFeed]) -> list[DraftDone | None]:
            # (a fork copies its source's prefix in the first pass; later ones feed its own)
            batch = [Feed(items[f.index][0], f.start, f.tokens, items[f.index][3] if step == 0
                          else None) for f in feeds]
            out: list[DraftDone | None] = []
            for logits, f in zip(self.lm.forward_batch(batch, skip_closed=skip_closed), feeds):
                a, sampling = actions[f.index], items[f.index][2]
                out.append(None if logits is None else _draft_done(
                    a.op, f.start + len(f.tokens), logits, sampling))
            return out

        return await self.device.run(lambda: run_rounds(actions, one_pass),
                                     executor=self.lm.executor, cost=self.cost,
                                     label=self.label, **_shape(items))


def _draft_done(op: int, position: int, logits, sampling: SamplingParams) -> DraftDone:
    """A draft pass's result from the logits of its fed tokens (the last row proposes the token
    for ``position``)."""
    c = draft_choice(logits[-1], position, sampling)
    return DraftDone(op, c.token, c.entropy, c.top_prob, c.alternatives, c.alt_probs)
