"""A model placed on a device with a timing rule: the only way the runtime runs a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.models.backend import CausalLM, Feed, KVCache
from wanspec.sampling import SamplingParams, choose_tokens, draft_choice
from wanspec.timing.device import Device, PassCost


def _shape(items: list) -> dict[str, int]:
    """What a batched pass's cost depends on: tokens fed, requests, longest window, KV read."""
    actions = [a for _, a, _ in items]
    return {"n_tokens": sum(len(a.tokens) for a in actions), "sequences": len(actions),
            "longest": max(len(a.tokens) for a in actions),
            "context": sum(a.start + len(a.tokens) for a in actions)}


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
                                        n_tokens=n, label=self.label,
                                        context=action.start + n)
        return TargetDone(action.op, choices)

    async def run_draft(self, cache: KVCache, action: RunDraft,
                        sampling: SamplingParams) -> DraftDone:
        def work() -> DraftDone:
            logits = self.lm.forward(cache, action.start, action.tokens)
            c = draft_choice(logits[-1], action.position, sampling)
            return DraftDone(action.op, c.token, c.entropy, c.top_prob)

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     n_tokens=len(action.tokens), label=self.label,
                                     context=action.start + len(action.tokens))

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

    async def run_drafts(self, items: list[tuple[KVCache, RunDraft, SamplingParams]]
                         ) -> list[DraftDone | None]:
        """Many requests' draft passes as one forward pass (``None`` as in :meth:`run_targets`)."""
        def work() -> list[DraftDone | None]:
            feeds = [Feed(cache, a.start, a.tokens) for cache, a, _ in items]
            out: list[DraftDone | None] = []
            for logits, (_, a, sampling) in zip(self.lm.forward_batch(feeds, skip_closed=True),
                                                items):
                if logits is None:
                    out.append(None)
                    continue
                c = draft_choice(logits[-1], a.position, sampling)
                out.append(DraftDone(a.op, c.token, c.entropy, c.top_prob))
            return out

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     label=self.label, **_shape(items))

