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
    prior_alpha: float = 0.7
    accepts: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.edges) + 1
        self.accepts = self.accepts or [0.0] * n
        self.trials = self.trials or [0.0] * n

    def bucket(self, entropy: float) -> int:
        return bisect.bisect_right(self.edges, entropy)

    @property
    def overall(self) -> float:
        w = self.prior_weight
        return (sum(self.accepts) + w * self.prior_alpha) / (sum(self.trials) + w)

    def update(self, entropy: float, accepted: bool) -> None:
        b = self.bucket(entropy)
        self.trials[b] += 1
        if accepted:
            self.accepts[b] += 1

    def p_accept(self, entropy: float) -> float:
        return self.p_accepts([entropy])[0]

    def p_accepts(self, entropies: Iterable[float]) -> list[float]:
        """:meth:`p_accept` of each entropy."""
        w, overall = self.prior_weight, self.overall
        out = []
        for e in entropies:
            b = bisect.bisect_right(self.edges, e)
            out.append((self.accepts[b] + w * overall) / (self.trials[b] + w))
        return out
