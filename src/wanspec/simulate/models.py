"""Synthetic target and draft models: deterministic given the prefix, acceptance as a parameter.

Why this shape: the cores only ever see token ids, so a "model" is a rule for which token a pass
returns.  Per request ``r`` every quantity is a precomputed array over absolute positions ``j``,
drawn from random streams keyed by ``(seed, r)`` (so a pass costs a few list look-ups):

* ``target[j]``: the target's token at ``j``.  The prompt is ``target[:P]`` and the target's
  choice for position ``j`` is ``target[j]`` whatever it is fed: a verification only uses choices
  up to its first mismatch, where the fed prefix is the committed one, so this is exactly a
  greedy target whose output is ``target[P:]``.  Every simulated decode must equal it
  (the losslessness check).
* ``match[j]``: whether a draft *on the correct prefix* proposes ``target[j]`` (else
  ``wrong[j] != target[j]``); drawn by the match model (i.i.d., Markov, or replayed from a trace).
* a draft whose fed prefix contains a wrong token proposes ``wrong[j]``: it can never be accepted,
  as with a real draft that conditions on a token the target did not choose.  Its entropy is the
  one right after the first wrong token (``entropy_bad``; a replayed trace records it).

So the worker's draft and the controller's local draft copy agree exactly, like two copies of a
greedy draft model, and the per-position decision makes acceptance of standard SD exactly the
i.i.d. analysis for the ``iid`` model.

Entropy (the signal the ``entropy`` and ``adaptive`` policies use): a draft that will match gets
``|N(base, sd)|`` nats, one that will not gets ``|N(base + separation, sd)|``; ``separation = 0``
makes entropy useless, large values make it a perfect rejection predictor.  ``top_prob`` is
``exp(-entropy)`` (no policy reads it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from wanspec.simulate.config import SimConfig

NO_BAD = 1 << 62  # "no wrong token in the cache"


class DraftCache:
    """A draft model's KV cache, reduced to what matters: the first wrong position it holds."""

    __slots__ = ("bad",)

    def __init__(self) -> None:
        self.bad = NO_BAD


@dataclass
class RequestWorld:
    """All synthetic sequences of one request (lists indexed by absolute position)."""

    n_prompt: int
    target: list[int]
    wrong: list[int]
    match: list[bool]
    entropy: list[float]
    top: list[float]
    entropy_bad: list[float]
    top_bad: list[float]
    max_tokens: int  # output length (a replayed request keeps its recorded length)

    @property
    def prompt(self) -> list[int]:
        return self.target[: self.n_prompt]

    def reference(self) -> list[int]:
        """What target-only decoding outputs (no EOS in the synthetic vocabulary)."""
        return self.target[self.n_prompt : self.n_prompt + self.max_tokens]

    def choices(self, first: int, want: int) -> tuple[int, ...]:
        return tuple(self.target[first : first + want])

    def draft(self, cache: DraftCache, start: int, tokens: Sequence[int]) -> tuple[int, float, float]:
        """One draft pass: cut ``cache`` to ``start``, feed ``tokens``, propose the next token.

        Returns ``(token, entropy, top_prob)`` for position ``start + len(tokens)``.
        """
        bad = cache.bad
        if bad >= start:  # the cut removes any wrong token at or after ``start``
            bad = NO_BAD
            target = self.target
            p = start
            for tok in tokens:
                if tok != target[p]:
                    bad = p
                    break
                p += 1
            cache.bad = bad
        pos = start + len(tokens)
        if bad < pos:
            # off the committed prefix since ``bad``: a draft that went wrong goes on about as
            # sure of itself as right after its miss (what real drafts do: a recorded trace
            # holds that entropy, and the worker's chain and local rounds report it)
            return self.wrong[pos], self.entropy_bad[bad + 1], self.top_bad[bad + 1]
        if self.match[pos]:
            return self.target[pos], self.entropy[pos], self.top[pos]
        return self.wrong[pos], self.entropy[pos], self.top[pos]


def iid_matches(rng: random.Random, n: int, alpha: float) -> list[bool]:
    r = rng.random
    return [r() < alpha for _ in range(n)]


def markov_matches(rng: random.Random, n: int, alpha: float, burst: float) -> list[bool]:
    """Two-state Markov chain on outcomes with stationary acceptance ``alpha`` and lag-1
    correlation ``burst``: P(accept | accept) = a + b(1-a), P(accept | reject) = a(1-b).

    Runs of acceptances last 1/((1-a)(1-b)) positions on average and runs of rejections
    1/(a(1-b)): ``burst = 0`` is the i.i.d. model, values near 1 give long easy and hard stretches
    (boilerplate vs novel content) at the same overall acceptance.
    """
    p_aa = alpha + burst * (1.0 - alpha)
    p_ra = alpha * (1.0 - burst)
    r = rng.random
    out: list[bool] = []
    state = r() < alpha
    for _ in range(n):
        out.append(state)
        state = r() < (p_aa if state else p_ra)
    return out


def stream(cfg: SimConfig, request: int, name: str) -> random.Random:
    return random.Random(f"wanspec-sim:{cfg.seed}:{request}:{name}")


def build_request(cfg: SimConfig, request: int, n_prompt: int,
                  matches: list[bool] | None = None,
                  entropies: list[float | None] | None = None,
                  max_tokens: int | None = None,
                  entropies_after_miss: list[float | None] | None = None) -> RequestWorld:
    """One request's sequences; ``matches``/``entropies`` (trace replay) override the models.

    ``matches`` must cover every position; ``entropies`` entries of None are drawn.
    ``max_tokens`` (default ``cfg.max_tokens``) is this request's output length.
    ``entropies_after_miss[j]``: the entropy of a draft at ``j`` on a prefix whose last token is
    the draft's own miss at ``j - 1`` (None: drawn from the rejected class).
    """
    n = n_prompt + cfg.max_tokens + 8
    v = cfg.vocab
    rt = stream(cfg, request, "target").random
    target = [int(rt() * v) for _ in range(n)]
    wrong = [(t + 1 + j % 97) % v for j, t in enumerate(target)]
    if matches is None:
        rm = stream(cfg, request, "match")
        if cfg.match == "markov":
            matches = markov_matches(rm, n, cfg.alpha, cfg.burst)
        else:
            matches = iid_matches(rm, n, cfg.alpha)
    elif len(matches) < n:
        raise ValueError(f"need {n} match flags, got {len(matches)}")
    matches = matches[:n]
    gauss_e = stream(cfg, request, "entropy").gauss
    gauss_b = stream(cfg, request, "entropy-bad").gauss
    base, sep, sd = cfg.entropy_base, cfg.separation, cfg.entropy_sd
    ent = [abs(gauss_e(base if m else base + sep, sd)) for m in matches]
    if entropies is not None:
        ent = [e if e is not None else d for e, d in zip(entropies, ent)]
    ent_bad = [abs(gauss_b(base + sep, sd)) for _ in range(n)]
    if entropies_after_miss is not None:
        ent_bad = [e if e is not None else d for e, d in zip(entropies_after_miss, ent_bad)]
    return RequestWorld(n_prompt, target, wrong, matches, ent, [math.exp(-e) for e in ent],
                        ent_bad, [math.exp(-e) for e in ent_bad],
                        cfg.max_tokens if max_tokens is None else min(max_tokens, cfg.max_tokens))
