"""What the controller learns online: RTT, pass times, draft arrival rate, acceptance.

Every estimate starts from a prior (the configured device costs, the handshake's RTT) and moves
with the controller's own measurements, so the policies adapt to the deployment they run in
instead of to constants tuned somewhere else.  One :class:`Estimates` object lives as long as the
worker link: each request starts from what the previous ones learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wanspec.core.calibration import EntropyCalibration


@dataclass
class Ewma:
    """Exponentially weighted moving average with a prior used until the first sample."""

    prior: float
    weight: float = 0.2
    value: float | None = None
    samples: int = 0

    def update(self, x: float) -> float:
        self.samples += 1
        self.value = x if self.value is None else (1 - self.weight) * self.value + self.weight * x
        return self.value

    @property
    def get(self) -> float:
        return self.prior if self.value is None else self.value


@dataclass
class PassTime:
    """Cost of a forward pass as ``base + per_token * (tokens fed - 1)``, learned online.

    Why two terms: a verification of ``w`` drafts feeds ``w + 1`` tokens, and whether longer
    windows pay depends on how much each extra token costs (little on a GPU, a lot on a CPU).
    Single-token passes teach the base; longer ones the per-token slope above it.
    """

    base: Ewma
    per_token: Ewma

    @classmethod
    def with_prior(cls, base_s: float, per_token_s: float = 0.0) -> "PassTime":
        return cls(Ewma(base_s), Ewma(per_token_s))

    def seconds(self, tokens: int) -> float:
        return self.base.get + self.per_token.get * max(tokens - 1, 0)

    def update(self, tokens: int, seconds: float) -> None:
        if tokens <= 1:
            self.base.update(seconds)
        else:
            self.per_token.update(max(seconds - self.base.get, 0.0) / (tokens - 1))


@dataclass
class AcceptanceModel:
    """How likely the target accepts the draft at each depth of a window.

    ``rate(d)`` estimates P(draft ``d`` of a window is accepted | drafts ``0..d-1`` were), from
    the controller's verifications: a window of ``w`` drafts with ``a`` accepted says "accepted" at
    depths ``0..a-1`` and "rejected" at depth ``a`` (if ``a < w``); deeper drafts were never
    judged.  Depth matters because acceptance is not i.i.d. in real text: a window starts right
    after a rejection more often than not, and rejections cluster.  Each depth is shrunk towards
    the pooled rate while it has few observations, and old observations fade (``memory``
    verifications), so the model follows the text it is decoding.
    """

    prior: float = 0.7
    prior_weight: float = 2.0  # pseudo-observations pulling each depth towards the pooled rate
    memory: float = 50.0  # verifications after which an observation's weight has fallen to 1/e
    max_depth: int = 16  # deeper drafts share the last depth's estimate
    accepts: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accepts = self.accepts or [0.0] * self.max_depth
        self.trials = self.trials or [0.0] * self.max_depth

    @property
    def pooled(self) -> float:
        """Acceptance over all judged drafts (per-token alpha of the SD analysis)."""
        w = self.prior_weight
        return (sum(self.accepts) + w * self.prior) / (sum(self.trials) + w)

    def rate(self, depth: int) -> float:
        d = min(depth, self.max_depth - 1)
        w = self.prior_weight
        return (self.accepts[d] + w * self.pooled) / (self.trials[d] + w)

    def rates(self, start: int, n: int) -> list[float]:
        """``[rate(start), ..., rate(start + n - 1)]``."""
        pooled, w = self.pooled, self.prior_weight
        last = self.max_depth - 1
        out = []
        for depth in range(start, start + n):
            d = min(depth, last)
            out.append((self.accepts[d] + w * pooled) / (self.trials[d] + w))
        return out

    def update(self, window: int, accepted: int) -> None:
        fade = 1.0 - 1.0 / self.memory
        self.accepts = [a * fade for a in self.accepts]
        self.trials = [t * fade for t in self.trials]
        for depth in range(min(accepted + 1, window)):
            d = min(depth, self.max_depth - 1)
            self.trials[d] += 1.0
            if depth < accepted:
                self.accepts[d] += 1.0


@dataclass
class Estimates:
    """What the controller believes about the link, both devices and the drafts (seconds)."""

    rtt: Ewma  # the link's one RTT estimator (shared with :class:`~wanspec.core.link.LinkCore`)
    target_pass: PassTime
    local_draft_pass: PassTime
    draft_interval: Ewma  # time between consecutive drafts of a live remote chain
    acceptance: AcceptanceModel
    calibration: EntropyCalibration  # draft entropy -> probability the target accepts it

    @classmethod
    def with_priors(cls, rtt_s: float = 0.05, target_s: float = 0.03, draft_s: float = 0.004,
                    verify_per_token_s: float = 0.0, rtt: Ewma | None = None) -> "Estimates":
        return cls(rtt if rtt is not None else Ewma(rtt_s),
                   PassTime.with_prior(target_s, verify_per_token_s),
                   PassTime.with_prior(draft_s), Ewma(draft_s), AcceptanceModel(),
                   EntropyCalibration())
