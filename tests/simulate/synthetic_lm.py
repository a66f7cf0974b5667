"""The simulator's synthetic models behind the runtime's model interface (duck-typed CausalLM).

With these, ``wanspec.emulate.runner.Emulation`` (asyncio adapters, in-process link, emulated
devices on a virtual clock) decodes exactly the sequences the simulator decodes, so the two
drivers of the same cores can be compared number for number.
"""

from __future__ import annotations

import concurrent.futures
import math
from pathlib import Path
from typing import Sequence

import torch

from wanspec.simulate.models import DraftCache, RequestWorld


class _Tokenizer:
    eos_token_id = None
    bos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {}


class _Cache:
    def __init__(self) -> None:
        self.world: RequestWorld | None = None
        self.draft = DraftCache()
        self.length = 0
        self.closed = False

    def close(self) -> None:
        """Nothing to give back (a real cache returns its KV slot)."""
        self.closed = True


class SyntheticLM:
    """``role`` is "target" (one-hot logits of the target sequence) or "draft" (the synthetic
    draft's proposal, with a distribution whose entropy is the simulated one)."""

    def __init__(self, worlds: Sequence[RequestWorld], role: str, vocab: int, name: str = "") -> None:
        self.worlds = list(worlds)
        self._by_prompt = {tuple(w.prompt): w for w in self.worlds}
        self.role = role
        self.vocab_size = vocab
        self.name = name or role
        self.path = Path("<synthetic>")
        self.tokenizer = _Tokenizer()
        self.eos_ids: frozenset[int] = frozenset()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)

    def sibling(self, name: str) -> "SyntheticLM":
        return SyntheticLM(self.worlds, self.role, self.vocab_size, name)

    def new_cache(self) -> _Cache:
        return _Cache()

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(map(str, ids))

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError("synthetic models take token ids")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def forward_batch(self, feeds, *, skip_closed: bool = False) -> list[torch.Tensor | None]:
        """CausalLM's batched interface; synthetic logits gain nothing from batching.  Forks
        (``Feed.source``) copy their source's prefix first, as the source was before the pass."""
        live = [f for f in feeds if not (skip_closed and f.cache.closed)]
        for f in live:
            source = getattr(f, "source", None)
            if source is not None:
                if f.start > source.length:
                    raise ValueError(f"cannot fork {f.start} positions off a cache of "
                                     f"{source.length}")
                f.cache.world = source.world
                f.cache.draft.copy_from(source.draft, f.start)
                f.cache.length = f.start
        return [None if skip_closed and f.cache.closed else self.forward(f.cache, f.start, f.tokens)
                for f in feeds]

    def forward(self, cache: _Cache, start: int, tokens: Sequence[int]) -> torch.Tensor:
        if start > cache.length:
            raise ValueError(f"cache holds {cache.length} tokens, cannot feed at {start}")
        if cache.world is None:
            assert start == 0
            n_prompt = len(self.worlds[0].prompt)
            cache.world = self._by_prompt[tuple(tokens[:n_prompt])]
        w = cache.world
        cache.length = start + len(tokens)
        n = len(tokens)
        if self.role == "target":
            logits = torch.full((n, self.vocab_size), -10.0, dtype=torch.float64)
            for i in range(n):
                logits[i, w.target[start + i + 1]] = 10.0
            return logits
        # the simulated draft's distribution itself: its token, its alternatives, every other
        # token at the same probability (simulate.models.draft_distribution), so the runtime
        # reads the simulator's entropy, top probability, alternatives and their probabilities
        tok, _, top, alts, alt_probs = w.draft(cache.draft, start, tokens)
        rest = (1.0 - top - sum(alt_probs)) / (self.vocab_size - 1 - len(alts))
        logits = torch.full((n, self.vocab_size), math.log(rest), dtype=torch.float64)
        logits[-1, tok] = math.log(top)
        for a, p in zip(alts, alt_probs):
            logits[-1, a] = math.log(p)
        return logits
