"""Online calibration of "draft entropy -> probability the target accepts the draft token".

The worker reports the entropy of its distribution for every draft.  Low entropy usually means
the draft is right, but how strongly depends on the model pair and the text, so the controller
learns the mapping from its own verifications: a Beta-Bernoulli estimate per entropy bucket,
shrunk towards the overall acceptance rate while a bucket has few samples.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable

DEFAULT_EDGES = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass
class EntropyCalibration:
    edges: tuple[float, ...] = DEFAULT_EDGES
    prior_weight: float = 4.0  # pseudo-observations pulling a bucket towards the global rate
    accepts: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)
    total_accepts: float = 0.0
    total_trials: float = 0.0
    prior_alpha: float = 0.7
    # p_accept per bucket (None: not computed yet), valid until the next update() (p_accepts);
    # change the counts through update() only
    _table: list[float | None] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.edges) + 1
        self.accepts = self.accepts or [0.0] * n
        self.trials = self.trials or [0.0] * n
        self._table = None  # (set here too: a compiled class does not apply init=False defaults)

    def bucket(self, entropy: float) -> int:
        return bisect.bisect_right(self.edges, entropy)

    @property
    def overall(self) -> float:
        w = self.prior_weight
        return (self.total_accepts + w * self.prior_alpha) / (self.total_trials + w)

    def update(self, entropy: float, accepted: bool) -> None:
        self._table = None
        b = self.bucket(entropy)
        self.trials[b] += 1
        self.total_trials += 1
        if accepted:
            self.accepts[b] += 1
            self.total_accepts += 1

    def p_accept(self, entropy: float) -> float:
        return self.p_accept_bucket(self.bucket(entropy))

    def p_accepts(self, entropies: Iterable[float]) -> tuple[float, ...]:
        """:meth:`p_accept` of each entropy (identical values).

        Why: the adaptive policy asks for every usable draft at every decision, while the counts
        change only at verifications; each bucket's value is computed once per update, when needed.
        """
        table = self._table
        if table is None:
            table = self._table = [None] * len(self.trials)
        edges = self.edges
        out = []
        for e in entropies:
            b = bisect.bisect_right(edges, e)
            p = table[b]
            if p is None:
                p = table[b] = self.p_accept_bucket(b)
            out.append(p)
        return tuple(out)

    def p_accept_bucket(self, b: int) -> float:
        w = self.prior_weight
        return (self.accepts[b] + w * self.overall) / (self.trials[b] + w)
