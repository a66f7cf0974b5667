"""A model placed on a device with a timing rule: the only way the runtime runs a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.models.backend import CausalLM, Feed, KVCache
from wanspec.sampling import SamplingParams, choose_tokens, draft_choice
from wanspec.timing.device import Device, PassCost, pass_shape


def _shape(items: list) -> dict[str, int]:
    """:func:`~wanspec.timing.device.pass_shape` of a batch's actions.

    A fork's KV copy (a draft pass with a source cache) is not in it: a device-memory copy of a
    prefix's keys and values, negligible next to a pass, so a pass costs the same with or without
    one."""
    return pass_shape([item[1] for item in items])


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
                        source: KVCache | None = None) -> DraftDone:
        """One draft pass; with ``source``, ``cache`` first takes ``source``'s first
        ``action.start`` positions (:class:`~wanspec.models.backend.Feed`).  The pass's emulated
        cost is the same either way (the copy is negligible next to a pass, see :func:`_shape`)."""
        def work() -> DraftDone:
            if source is None:
                return _draft_done(action, self.lm.forward(cache, action.start, action.tokens),
                                   sampling)
            forked = self.lm.forward_batch([Feed(cache, action.start, action.tokens, source)])[0]
            assert forked is not None
            return _draft_done(action, forked, sampling)

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     label=self.label, **pass_shape([action]))

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
                                                  KVCache | None]]) -> list[DraftDone | None]:
        """Many requests' draft passes as one forward pass (``None`` as in :meth:`run_targets`,
        also for a fork whose source cache was closed); an item's last element is the cache
        its cache forks off (``Feed.source``), or None."""
        def work() -> list[DraftDone | None]:
            feeds = [Feed(cache, a.start, a.tokens, source) for cache, a, _, source in items]
            out: list[DraftDone | None] = []
            for logits, (_, a, sampling, _) in zip(self.lm.forward_batch(feeds, skip_closed=True),
                                                   items):
                out.append(None if logits is None else _draft_done(a, logits, sampling))
            return out

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     label=self.label, **_shape(items))



def _draft_done(action: RunDraft, logits, sampling: SamplingParams) -> DraftDone:
    """A draft pass's result from the logits of its fed tokens (the last row proposes)."""
    c = draft_choice(logits[-1], action.position, sampling)
    return DraftDone(action.op, c.token, c.entropy, c.top_prob, c.alternatives, c.alt_probs)
