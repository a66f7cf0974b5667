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
  one right after the first wrong token (``entropy_bad``), or, where a replayed trace holds
  them, those the real draft had as it went on from its miss (``further_bad``, the last one past
  their end): a policy reads the entropies of drafts past a miss it has not found yet.  A draft
  that went wrong by taking one of its alternatives (a draft tree's branch) reports what the
  real draft proposed going on from that alternative where a trace holds it (``after_alt``).

So the worker's draft and the controller's local draft copy agree exactly, like two copies of a
greedy draft model, and the per-position decision makes acceptance of standard SD exactly the
i.i.d. analysis for the ``iid`` model.

Top-k structure (what a draft tree branches from): every pass also returns the draft's next
three choices after its token, best first (``DraftDone.alternatives``), and their probabilities.

* ``rank[j]``: where the target's token sits among the choices of a draft on the correct prefix:
  1 when ``match[j]``; at a rejection 2, 3 or 4 (the draft's 2nd-4th choice) with probabilities
  ``rank2``-``rank4`` of the config (measured on the shipped pair: benchmarks/draft_ranks.py),
  else 0 (none of its top 4).  Drawn per position from the request's own stream (``"rank"``),
  or replayed from a trace.
* the alternatives at ``j`` are wrong tokens (``target[j] + 98, + 99, + 100`` mod the vocabulary:
  never ``target[j]`` nor ``wrong[j]``), with ``target[j]`` put in at index ``rank[j] - 2`` when
  the rank is 2-4 (a vocabulary of 100 tokens or fewer may leave fewer wrong ones).  A draft off the committed prefix returns the wrong ones only: like its token,
  its alternatives can never be the target's, as for a real draft conditioned on a wrong token.
* their probabilities (:func:`alt_probs`): a function of ``top_prob`` fitted to the shipped
  pair's mean choice probabilities (docs/simulator.md).  They do not depend on the rank: which
  alternative is the target's is the rank's business alone.

Entropy, ``top_prob`` and the alternatives' probabilities are those of one distribution over the
vocabulary (:func:`draft_distribution`): the token at ``top_prob``, its three alternatives by
:func:`alt_probs`, every other token at the same small probability, ``top_prob`` chosen so that
the entropy is the drawn one (a draw outside what such a distribution can have, with its
alternatives above every other token, is clamped into it).  So a model whose logits are this
distribution reports exactly what the simulated draft reports (tests/simulate/synthetic_lm.py).
A replayed trace gives the recorded entropy and, when it records them, the recorded
probabilities.

Feeding any token makes the draft condition on it: a branch that starts from an alternative equal
to ``target[j]`` is back on the committed prefix (its next proposals are those of the match
model), any other token puts it off the prefix for good (until a cut removes it).

Entropy (the signal the ``entropy`` and ``adaptive`` policies use): a draft that will match gets
``|N(base, sd)|`` nats, one that will not gets ``|N(base + separation, sd)|``; ``separation = 0``
makes entropy useless, large values make it a perfect rejection predictor.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from wanspec.core.actions import DraftDone, RunDraft
from wanspec.core.rounds import run_rounds
from wanspec.simulate.config import SimConfig

NO_BAD = 1 << 62  # "no wrong token in the cache"
ALTERNATIVES = 3  # the draft's choices after its token that a pass reports (DraftDone)
ALT_OFFSETS = (98, 99, 100)  # wrong alternatives: target + these (wrong[] uses 1..97)
# The draft's probabilities of its next choices given that of its top one, p1 (s = 1 - p1):
#   p2 = p1 * 0.8 * s**1.3, then each (0.2 + 0.6 * s) times the one before.
# Fitted to the shipped pair's mean probabilities per bin of p1 (benchmarks/draft_ranks.py prints
# them next to this rule's): a sure draft has almost no runner-up, a hesitant one several close
# ones.
ALT_SCALE, ALT_POWER = 0.8, 1.3
ALT_DECAY_BASE, ALT_DECAY_SLOPE = 0.2, 0.6


class DraftCache:
    """A draft model's KV cache, reduced to what matters: the first wrong position it holds and
    the token there, and how many positions it holds (a pass may not feed past them, as with a
    real cache)."""

    __slots__ = ("bad", "bad_token", "length")

    def __init__(self) -> None:
        self.bad = NO_BAD
        self.bad_token = -1
        self.length = 0

    def copy_from(self, source: "DraftCache", start: int) -> None:
        """Take the first ``start`` positions of ``source`` (``DraftFor.copy_from``): its wrong
        token, if it holds one before ``start``."""
        if start > source.length:
            raise ValueError(f"cannot copy {start} positions of a draft cache holding "
                             f"{source.length}")
        self.bad = source.bad if source.bad < start else NO_BAD
        self.bad_token = source.bad_token if source.bad < start else -1
        self.length = start


def alt_probs(top: float) -> tuple[float, float, float]:
    """The draft's probabilities of its 2nd-4th choices given that of its 1st, ``top`` (the rule
    above).  Each is at most the one before; with ``top`` they never sum past 1."""
    s = 1.0 - top
    p2 = top * ALT_SCALE * s ** ALT_POWER
    r = ALT_DECAY_BASE + ALT_DECAY_SLOPE * s
    p3 = p2 * r
    return (p2, p3, p3 * r)


def _xlogx(x: float) -> float:
    return x * math.log(x) if x > 0.0 else 0.0


def distribution_entropy(top: float, vocab: int) -> float:
    """Entropy (nats) of the synthetic draft's distribution whose top probability is ``top``:
    ``top``, :func:`alt_probs` (``top``), and the rest shared evenly by ``vocab - 4`` tokens."""
    a = alt_probs(top)
    q = (1.0 - top - sum(a)) / (vocab - 1 - ALTERNATIVES)
    return -(_xlogx(top) + _xlogx(a[0]) + _xlogx(a[1]) + _xlogx(a[2])
             + (vocab - 1 - ALTERNATIVES) * _xlogx(q))


def _ordered(s: float, vocab: int) -> bool:
    """Whether the distribution of top probability ``1 - s`` has its alternatives strictly above
    every other token (so they are the draft's 2nd-4th choices)."""
    a = alt_probs(1.0 - s)
    q = (s - sum(a)) / (vocab - 1 - ALTERNATIVES)
    return 0.0 < q < a[2] * (1.0 - 1e-9)


@functools.lru_cache(maxsize=16)
def _family(vocab: int) -> tuple[list[float], list[float]]:
    """``(entropies, s)``: entropy increasing with ``s = 1 - top_prob`` over the ordered range of
    the family (log-spaced, 2,048 points), to invert by interpolation."""
    grid = [math.exp(math.log(1e-14) + (math.log(1.0 - 1e-9) - math.log(1e-14)) * i / 4000)
            for i in range(4001)]
    feasible = [x for x in grid if _ordered(x, vocab)]
    if not feasible:
        raise ValueError(f"no synthetic draft distribution over {vocab} tokens")
    lo, hi = math.log(feasible[0]), math.log(feasible[-1])
    ss, hs = [], []
    for i in range(2048):
        x = math.exp(lo + (hi - lo) * i / 2047)
        h = distribution_entropy(1.0 - x, vocab)
        if not hs or h > hs[-1]:
            ss.append(x)
            hs.append(h)
    return hs, ss


def draft_distribution(entropy: float, vocab: int) -> tuple[float, float]:
    """``(top_prob, entropy)`` of the synthetic draft's distribution closest to ``entropy``:
    the top probability that gives it (by interpolation in a table), and the exact entropy the
    distribution then has (the requested one up to ~1e-5 nats, or the nearest the family has)."""
    hs, ss = _family(vocab)
    if entropy <= hs[0]:
        x = ss[0]
    elif entropy >= hs[-1]:
        x = ss[-1]
    else:
        k = bisect.bisect_left(hs, entropy)
        x = ss[k - 1] + (ss[k] - ss[k - 1]) * (entropy - hs[k - 1]) / (hs[k] - hs[k - 1])
    top = 1.0 - x
    return top, distribution_entropy(top, vocab)


def wrong_alternatives(t: int, avoid: int, vocab: int) -> tuple[int, ...]:
    """Three distinct tokens, none ``t`` (the target's) nor ``avoid`` (the draft's token)."""
    if vocab > ALT_OFFSETS[-1]:
        return tuple((t + o) % vocab for o in ALT_OFFSETS)
    out: list[int] = []
    o = ALT_OFFSETS[0]
    while len(out) < ALTERNATIVES and o < ALT_OFFSETS[0] + vocab:
        tok = (t + o) % vocab
        if tok != t and tok != avoid and tok not in out:
            out.append(tok)
        o += 1
    return tuple(out)


def with_target(wrong: tuple[int, ...], t: int, rank: int) -> tuple[int, ...]:
    """``wrong`` with ``t`` at index ``rank - 2`` (the draft's ``rank``-th choice)."""
    if rank < 2:
        return wrong
    return (*wrong[: rank - 2], t, *wrong[rank - 2:])[:ALTERNATIVES]


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
    rank: list[int]  # the target's token among the choices of a draft on the right prefix
    alts: list[tuple[int, ...]]  # the alternatives of a draft on the right prefix
    alts_off: list[tuple[int, ...]]  # those of a draft off it (never the target's token)
    alt_p: list[tuple[float, ...]]  # the alternatives' probabilities (alt_probs(top[j]))
    alt_p_bad: list[tuple[float, ...]]  # those of a draft off the prefix (alt_probs(top_bad[j]))
    # j -> (entropy, top_prob, alt_probs) of a draft at j + 1, j + 2, ... going on from a miss at
    # j - 1 (a trace's record; without one every draft off the prefix reports entropy_bad[j])
    further_bad: dict[int, list[tuple[float, float, tuple[float, ...]]]] = field(
        default_factory=dict)
    # (j, token) -> (entropy, top_prob, alt_probs) of a draft at j + 1, j + 2, ... going on from
    # ``token``, a wrong alternative of the draft at j (a trace's record; else as further_bad)
    after_alt: dict[tuple[int, int], list[tuple[float, float, tuple[float, ...]]]] = field(
        default_factory=dict)

    @property
    def prompt(self) -> list[int]:
        return self.target[: self.n_prompt]

    def reference(self) -> list[int]:
        """What target-only decoding outputs (no EOS in the synthetic vocabulary)."""
        return self.target[self.n_prompt : self.n_prompt + self.max_tokens]

    def choices(self, first: int, want: int) -> tuple[int, ...]:
        return tuple(self.target[first : first + want])

    def draft_round(self, cache: DraftCache, action: RunDraft) -> DraftDone:
        """``action``'s pass, or round of passes (``RunDraft.count``), on ``cache``: what each
        pass feeds as the runtime feeds it (:func:`~wanspec.core.rounds.run_rounds`)."""
        done = run_rounds([action], lambda _, feeds: [
            DraftDone(action.op, *self.draft(cache, f.start, f.tokens)) for f in feeds])[0]
        assert done is not None
        return done

    def draft(self, cache: DraftCache, start: int, tokens: Sequence[int]
              ) -> tuple[int, float, float, tuple[int, ...], tuple[float, ...]]:
        """One draft pass: cut ``cache`` to ``start``, feed ``tokens``, propose the next token.

        Returns ``(token, entropy, top_prob, alternatives, alt_probs)`` for position
        ``start + len(tokens)`` (the fields of a ``DraftDone``).
        """
        if start > cache.length:
            raise ValueError(f"draft cache holds {cache.length} positions, cannot feed at {start}")
        pos = start + len(tokens)
        cache.length = pos
        bad = cache.bad
        if bad >= start:  # the cut removes any wrong token at or after ``start``
            bad = NO_BAD
            target = self.target
            p = start
            for tok in tokens:
                if tok != target[p]:
                    bad = p
                    cache.bad_token = tok
                    break
                p += 1
            cache.bad = bad
        if bad < pos:
            # off the committed prefix since ``bad``: a draft that went wrong goes on about as
            # sure of itself as right after its miss (what real drafts do: a recorded trace
            # holds that entropy, and the worker's chain and local rounds report it), or, from
            # an alternative whose proposals a trace holds, as the real draft went on from it
            steps = self.after_alt.get((bad, cache.bad_token)) if self.after_alt else None
            if steps:
                e, top, alt_p = steps[min(pos - bad, len(steps)) - 1]
                return (self.wrong[pos], e, top, self.alts_off[pos], alt_p)
            b = bad + 1
            further = self.further_bad.get(b) if pos > b else None
            if further:
                e, top, alt_p = further[min(pos - b, len(further)) - 1]
                return (self.wrong[pos], e, top, self.alts_off[pos], alt_p)
            return (self.wrong[pos], self.entropy_bad[b], self.top_bad[b], self.alts_off[pos],
                    self.alt_p_bad[b])
        return (self.target[pos] if self.match[pos] else self.wrong[pos], self.entropy[pos],
                self.top[pos], self.alts[pos], self.alt_p[pos])


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


def draw_ranks(rng: random.Random, n: int, probs: tuple[float, float, float]) -> list[int]:
    """Per position, the rank a rejection there has: 2, 3, 4 with ``probs``, else 0."""
    r = rng.random
    c2 = probs[0]
    c3 = c2 + probs[1]
    c4 = c3 + probs[2]
    out = []
    for _ in range(n):
        u = r()
        out.append(2 if u < c2 else 3 if u < c3 else 4 if u < c4 else 0)
    return out


def build_request(cfg: SimConfig, request: int, n_prompt: int,
                  matches: list[bool] | None = None,
                  entropies: list[float | None] | None = None,
                  max_tokens: int | None = None,
                  entropies_after_miss: list[float | None] | None = None,
                  ranks: list[int | None] | None = None,
                  rank_probs: tuple[float, float, float] | None = None,
                  probs: list[tuple[float, ...] | None] | None = None,
                  probs_after_miss: list[tuple[float, ...] | None] | None = None,
                  further_after_miss: dict[int, list[tuple[float, ...]]] | None = None,
                  after_alternative: dict[tuple[int, int], list[tuple[float, ...]]] | None = None
                  ) -> RequestWorld:
    """One request's sequences; ``matches``/``entropies`` (trace replay) override the models.

    ``matches`` must cover every position; ``entropies`` entries of None are drawn.
    ``max_tokens`` (default ``cfg.max_tokens``) is this request's output length.
    ``entropies_after_miss[j]``: the entropy of a draft at ``j`` on a prefix whose last token is
    the draft's own miss at ``j - 1`` (None: drawn from the rejected class).
    ``ranks[j]``: the rank of a rejection at ``j`` (0, 2, 3, 4; None: drawn); ``rank_probs``
    (default the config's ``rank2``-``rank4``): what the draws use.
    ``probs[j]`` / ``probs_after_miss[j]``: recorded ``(top_prob, *alt_probs)`` of the draft at
    ``j`` on the committed prefix / right after its own miss at ``j - 1`` (None: the synthetic
    distribution of the entropy there).
    ``further_after_miss[j]``: recorded ``(entropy, top_prob, *alt_probs)`` of the draft at
    ``j + 1``, ``j + 2``, ... as it goes on from its own miss at ``j - 1``.
    ``after_alternative[(j, i)]``: recorded ``(entropy, top_prob, *alt_probs)`` of the draft at
    ``j + 1``, ``j + 2``, ... as it goes on from its ``i + 2``-th choice at ``j`` (not the
    target's token).
    """
    n = n_prompt + cfg.max_tokens + 8
    v = cfg.vocab
    rt = stream(cfg, request, "target").random
    target = [int(rt() * v) for _ in range(n)]
    wrong = [(t + 1 + j % 97) % v for j, t in enumerate(target)]
    if v <= 97:  # (an offset that is a multiple of the vocabulary would give the target's token)
        wrong = [w if w != t else (t + 1) % v for w, t in zip(wrong, target)]
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
    ent, top = _distributions([abs(gauss_e(base if m else base + sep, sd)) for m in matches],
                              entropies, probs, v)
    ent_bad, top_bad = _distributions([abs(gauss_b(base + sep, sd)) for _ in range(n)],
                                      entropies_after_miss, probs_after_miss, v)
    if rank_probs is None:
        rank_probs = (cfg.rank2, cfg.rank3, cfg.rank4)
    drawn = draw_ranks(stream(cfg, request, "rank"), n, rank_probs)
    if ranks is not None:
        drawn = [d if k is None else k for k, d in zip(ranks, drawn)]
    rank = [1 if m else k for m, k in zip(matches, drawn)]
    alts_off = [wrong_alternatives(t, w, v) for t, w in zip(target, wrong)]
    alts = [a if k < 2 else with_target(a, t, k) for a, t, k in zip(alts_off, target, rank)]
    return RequestWorld(n_prompt, target, wrong, matches, ent, [t for t, _ in top], ent_bad,
                        [t for t, _ in top_bad],
                        cfg.max_tokens if max_tokens is None else min(max_tokens, cfg.max_tokens),
                        rank, alts, alts_off, [a for _, a in top], [a for _, a in top_bad],
                        {j: _steps(steps) for j, steps in (further_after_miss or {}).items()},
                        {(j, alts[j][i]): _steps(steps)
                         for (j, i), steps in (after_alternative or {}).items()
                         if j < n and i < len(alts[j]) and alts[j][i] != target[j]})


def _steps(recorded: Sequence[Sequence[float]]) -> list[tuple[float, float, tuple[float, ...]]]:
    """Recorded ``(entropy, top_prob, *alt_probs)`` proposals as a pass reports them."""
    return [(e, p[0], _padded(p[1:])) for e, *p in recorded]


def _padded(alt_probs: Sequence[float]) -> tuple[float, ...]:
    """Recorded alternatives' probabilities as a pass reports them: ALTERNATIVES of them."""
    return (*alt_probs[:ALTERNATIVES], *([0.0] * (ALTERNATIVES - len(alt_probs))))


def _distributions(drawn: list[float], recorded: list[float | None] | None,
                   probs: list[tuple[float, ...] | None] | None, vocab: int
                   ) -> tuple[list[float], list[tuple[float, tuple[float, ...]]]]:
    """Per position: the entropy, and ``(top_prob, alt_probs)``.  A drawn entropy becomes that of
    the synthetic distribution nearest it; a recorded one is kept, with the recorded
    probabilities (``(top_prob, *alt_probs)``, the latter padded with zeros) when given, else
    those of the synthetic distribution of that entropy."""
    ent: list[float] = []
    out: list[tuple[float, tuple[float, ...]]] = []
    for j, d in enumerate(drawn):
        e = recorded[j] if recorded is not None else None
        p = probs[j] if probs is not None else None
        if p is not None:
            out.append((p[0], _padded(p[1:])))
            ent.append(e if e is not None else d)
            continue
        top, exact = draft_distribution(d if e is None else e, vocab)
        out.append((top, alt_probs(top)))
        ent.append(exact if e is None else e)
    return ent, out
