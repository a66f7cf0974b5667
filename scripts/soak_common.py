"""What both soak runs of ``scripts/soak.py`` share: the shipped pair, its target-only
references, and the settings every run draws from."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.sampling import SamplingParams

PROMPTS = (
    "To be, or not to be, that is",
    "Now is the winter of our discontent",
    "Friends, Romans, countrymen, lend me",
    "All the world's a stage, and all the",
    "The quality of mercy is not strained;",
    "Once more unto the breach, dear friends,",
)
SAMPLINGS = {"greedy": SamplingParams(), "sampled": SamplingParams(temperature=0.8, top_p=0.95,
                                                                   seed=7)}
POLICIES = ("remote", "always", "entropy", "adaptive")
REFERENCE_TOKENS = 32
TIMING = TimingConfig.emulate(30, 4)  # target / draft pass costs (ms) on the virtual clock


# ---- the shipped pair and target-only references -----------------------------------------------


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread: as fast for these tiny models, and it never oversubscribes a
    shared machine (two threads per process made every pass several times slower there)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Pair:
    """The shipped pair in fp32 on the CPU, and target-only outputs, computed once each."""

    def __init__(self) -> None:
        self.target = CausalLM(DEFAULT_TARGET, dtype="float32", device="cpu", name="target")
        self.draft = CausalLM(DEFAULT_DRAFT, dtype="float32", device="cpu", name="draft")
        self._engine = LocalEngine(self.target, timing=TIMING)
        self._refs: dict[tuple[str, str], list[int]] = {}

    def prepare(self, keys: Iterable[tuple[str, str]]) -> None:
        """Compute the references of ``(prompt, sampling)`` now: not inside a running loop."""
        for prompt, sampling in keys:
            self.reference(prompt, sampling, REFERENCE_TOKENS)

    def reference(self, prompt: str, sampling: str, max_tokens: int) -> list[int]:
        """Target-only output; EOS ignored, so a shorter request's is a prefix of a longer's
        (sampling noise is keyed by position)."""
        key = (prompt, sampling)
        ref = self._refs.get(key)
        if ref is None or len(ref) < max_tokens:
            ref = self._refs[key] = self._engine.generate(
                prompt, mode="target", max_tokens=max(max_tokens, REFERENCE_TOKENS),
                sampling=SAMPLINGS[sampling], ignore_eos=True).token_ids
        return ref[:max_tokens]

    def close(self) -> None:
        self.target.close()
        self.draft.close()
