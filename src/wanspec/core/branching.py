"""Which branch of a draft tree the worker grows next (see :mod:`wanspec.core.tree`).

A branch pays off when the target reaches its fork and chooses its first token there: then the
controller verifies it at once instead of waiting a round trip or drafting locally.  So a
candidate -- an alternative token ``a`` the draft ranked below its choice at position ``p`` of a
lane -- is worth the probability of exactly that::

    value(lane, p, a) = reach(lane, p) * hit(q_a)
    reach(lane, p)    = reach(lane) * prod over the lane's drafts d at positions [.., p) of accept(d)
    reach(branch)     = reach(its parent, at its fork) * hit(q of its first token)

where ``reach`` of the line the committed prefix runs along is 1, ``accept(d)`` is the draft's own
confidence (its top probability) and ``hit(q)`` the draft's probability of the alternative, both
corrected online by what the controller commits (:class:`BranchOdds`).  Every branch saves the
same round trip when it is taken, so the worker grows the most probable ones first, as many as the
session's budget and the worker's spare capacity allow, and none below :data:`MIN_VALUE`.  Each
branch then drafts as deep as the session's lookahead, like the main line: enough to cover a
round trip of verification along the path it bets on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wanspec.core.chain import DraftToken
from wanspec.core.tree import Lane, TreeShape

MIN_VALUE = 0.02  # a branch the target takes less often than this is not worth a KV cache
_DECAY = 0.98  # the odds follow the recent past (about the last 50 judgements)
_PRIOR = 4.0  # pseudo-observations at ratio 1: trust the draft's probabilities at first


@dataclass(slots=True)
class WorkerLane(Lane):
    """A lane at the worker: also its KV cache and the runner-ups its drafts had."""

    cache: int = 0
    # position -> the draft's alternatives there, best first, as (token, probability)
    alternatives: dict[int, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    reach: float = 1.0  # probability that the target reaches the lane's first token
    sent_first: bool = True  # a branch's first message (with its first token) has gone


@dataclass(slots=True)
class _Ratio:
    """Observed over predicted, decayed, starting at 1 (``value``, kept within [0.25, 4])."""

    seen: float = _PRIOR
    predicted: float = _PRIOR
    value: float = 1.0  # set by update: read for every candidate of every pass, computed once

    def update(self, predicted: float, seen: float) -> None:
        self.predicted = self.predicted * _DECAY + predicted
        self.seen = self.seen * _DECAY + seen
        self.value = min(max(self.seen / self.predicted, 0.25), 4.0)


@dataclass(slots=True)
class BranchOdds:
    """The draft's probabilities, calibrated by commits: how often its choice is accepted and
    how often, when it is not, the target's token is one of its recorded runner-ups."""

    accepted: _Ratio = field(default_factory=_Ratio)
    runner_up: _Ratio = field(default_factory=_Ratio)

    def accept(self, top_prob: float) -> float:
        return min(1.0, top_prob * self.accepted.value)

    def hit(self, prob: float) -> float:
        return min(1.0, prob * self.runner_up.value)

    def on_judged(self, draft: DraftToken, accepted: bool,
                  alternatives: tuple[tuple[int, float], ...], committed: int) -> None:
        """A draft met the committed token; when it was rejected, were the runner-ups right?"""
        self.accepted.update(draft.top_prob, float(accepted))
        if not accepted and alternatives:
            mass = sum(q for _, q in alternatives)
            self.runner_up.update(mass, float(any(t == committed for t, _ in alternatives)))


@dataclass(slots=True)
class Candidate:
    """A branch to grow: ``token`` at ``fork`` instead of ``parent``'s draft there."""

    parent: WorkerLane
    fork: int
    token: int
    hit: float  # probability the target chooses ``token`` at ``fork`` if it gets there
    value: float  # probability the target takes the branch: reach(parent, fork) * hit
    entropy: float  # of the draft's distribution at ``fork``


def best_candidates(tree: TreeShape[WorkerLane], committed: int, limit: int,
                    odds: BranchOdds, count: int = 1) -> list[Candidate]:
    """The ``count`` most probable branches not grown yet, best first (ties: in lane order),
    forking at or after ``committed`` and early enough that each can draft at least one token
    before ``limit``.

    Growing one does not change the others' values (a new lane has no alternatives until its
    first pass), so one sweep over the tree serves a whole refill of the budget."""
    found: list[tuple[float, int, WorkerLane, int, int, float]] = []  # value, order, ..., hit
    reach: dict[int, float] = {}  # lane id -> probability the target reaches its first token
    for lane in sorted(tree.lanes.values(), key=lambda x: x.id):  # parents before children
        if lane.id == tree.lane:
            r = 1.0
        elif lane.parent in reach:
            r = reach[lane.parent] * _reach_along(tree.lanes[lane.parent], committed, lane.fork,
                                                  odds) * lane.reach
        else:
            continue
        reach[lane.id] = r
        first_own = max(lane.start, committed, lane.fork + (lane.id != 0))
        for pos in range(first_own, min(lane.end, limit - 1)):
            if r < MIN_VALUE:
                break
            for token, q in lane.alternatives.get(pos, ()):
                hit = odds.hit(q)
                if r * hit >= MIN_VALUE and (lane.id, pos, token) not in tree.branches:
                    found.append((r * hit, len(found), lane, pos, token, hit))
            r *= odds.accept(lane.drafts[pos - lane.start].top_prob)
    best = sorted(found, key=lambda f: (-f[0], f[1]))[:count]
    return [Candidate(lane, pos, token, hit, value, lane.drafts[pos - lane.start].entropy)
            for value, _, lane, pos, token, hit in best]


def best_candidate(tree: TreeShape[WorkerLane], committed: int, limit: int,
                   odds: BranchOdds) -> Candidate | None:
    """The most probable branch not grown yet (:func:`best_candidates`), or None."""
    best = best_candidates(tree, committed, limit, odds, 1)
    return best[0] if best else None


def _reach_along(lane: WorkerLane, committed: int, position: int, odds: BranchOdds) -> float:
    """Probability that the target accepts ``lane``'s drafts from its first uncommitted own
    position up to (not including) ``position``."""
    r = 1.0
    for pos in range(max(lane.start, committed, lane.fork + (lane.id != 0)), position):
        r *= odds.accept(lane.drafts[pos - lane.start].top_prob)
    return r
