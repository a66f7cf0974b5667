"""A model placed on a device with a timing rule: the only way the runtime runs a forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from wanspec.core.actions import DraftDone, RunDraft, RunTarget, TargetDone
from wanspec.models.backend import CausalLM, KVCache
from wanspec.sampling import SamplingParams, choose_tokens, draft_choice
from wanspec.timing.device import Device, PassCost


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
                                        n_tokens=n, label=self.label)
        return TargetDone(action.op, choices)

    async def run_draft(self, cache: KVCache, action: RunDraft,
                        sampling: SamplingParams) -> DraftDone:
        def work() -> DraftDone:
            logits = self.lm.forward(cache, action.start, action.tokens)
            c = draft_choice(logits[-1], action.position, sampling)
            return DraftDone(action.op, c.token, c.entropy, c.top_prob)

        return await self.device.run(work, executor=self.lm.executor, cost=self.cost,
                                     n_tokens=len(action.tokens), label=self.label)
