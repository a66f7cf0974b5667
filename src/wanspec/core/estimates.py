"""What the controller learns online: RTT, pass times, draft arrival rate, acceptance.

Every estimate starts from a prior (the configured device costs, the handshake's RTT) and moves
with the controller's own measurements, so the policies adapt to the deployment they run in
instead of to constants tuned somewhere else.  One :class:`Estimates` object lives as long as the
worker link: each request starts from what the previous ones learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

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

    def seconds_up_to(self, tokens: int) -> list[float]:
        """``[seconds(1), seconds(2), ..., seconds(tokens)]``."""
        base, per_token = self.base.get, self.per_token.get
        return [base + per_token * i for i in range(tokens)]

    def update(self, tokens: int, seconds: float) -> None:
        if tokens <= 1:
            self.base.update(seconds)
        else:
            self.per_token.update(max(seconds - self.base.get, 0.0) / (tokens - 1))


@dataclass
class AcceptanceModel:
    """How likely the target accepts a draft, learned from every draft the controller can judge.

    A draft is *judged* when the target's token at its position is committed: drafts in a
    verified window, and also the worker's drafts for positions committed some other way (a
    plain step, a local window), so the estimate does not depend on which windows the policy
    chose to verify.  Acceptance is not i.i.d. in real text (hard and easy stretches), so two
    rates are kept: ``next`` for a draft whose previous position was an accepted draft (a run
    going on) and ``first`` for any other (after a rejection, a bonus token or a plain step),
    which is where every verification window of standard SD starts.  Each rate is shrunk
    towards the pooled rate while it has few observations, and old judgements fade (``memory``
    drafts), so the model follows the text being decoded.
    """

    prior: float = 0.7
    prior_weight: float = 1.0  # pseudo-observations pulling each rate towards the pooled one
    memory: float = 1000.0  # judged drafts after which an observation's weight is down to 1/e
    accepts: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [first, next]
    trials: list[float] = field(default_factory=lambda: [0.0, 0.0])

    @property
    def pooled(self) -> float:
        """Acceptance over all judged drafts (the per-token alpha of the SD analysis)."""
        w = self.prior_weight
        return (sum(self.accepts) + w * self.prior) / (sum(self.trials) + w)

    def rate(self, after_accept: bool) -> float:
        i, w = int(after_accept), self.prior_weight
        return (self.accepts[i] + w * self.pooled) / (self.trials[i] + w)

    def bound(self, after_accept: bool, errors: float) -> float:
        """:meth:`rate` moved by ``errors`` standard errors (clamped to [0, 1]): what the
        acceptance may well be, at best (``errors > 0``) or at worst (``< 0``)."""
        i, r = int(after_accept), self.rate(after_accept)
        se = math.sqrt(r * (1.0 - r) / (self.trials[i] + self.prior_weight))
        return min(max(r + errors * se, 0.0), 1.0)

    def window_rates(self, start: int, n: int, errors: float = 0.0) -> list[float]:
        """Acceptance rates of window drafts ``start .. start+n-1`` not made yet: the first of a
        window follows a commit (``first``), later ones follow an accepted draft (``next``);
        each moved by ``errors`` standard errors (:meth:`bound`)."""
        first, nxt = self.bound(False, errors), self.bound(True, errors)
        return [first if d == 0 else nxt for d in range(start, start + n)]

    def update(self, after_accept: bool, accepted: bool) -> None:
        fade = 1.0 - 1.0 / self.memory
        self.accepts = [a * fade for a in self.accepts]
        self.trials = [t * fade for t in self.trials]
        i = int(after_accept)
        self.trials[i] += 1.0
        self.accepts[i] += float(accepted)


@dataclass
class Estimates:
    """What the controller believes about the link, both devices and the drafts (seconds)."""

    rtt: Ewma  # the link's one RTT estimator (shared with :class:`~wanspec.core.link.LinkCore`)
    target_pass: PassTime
    local_draft_pass: PassTime
    draft_interval: Ewma  # time between consecutive drafts of a live remote chain
    acceptance: AcceptanceModel
    calibration: EntropyCalibration  # draft entropy -> probability the target accepts it
    # latency budget per token that requests left unspent at their end (negative: overspent);
    # the adaptive policy credits it up front to spend its budget evenly (pacing)
    unspent_per_token: Ewma
    # requests per busy-site target pass and per busy-site draft pass (1 alone): under load a
    # draft pass delays every request of the next target pass, and is shared by those drafting
    target_batch: Ewma = field(default_factory=lambda: Ewma(1.0))
    draft_batch: Ewma = field(default_factory=lambda: Ewma(1.0))
    target_longest: Ewma = field(default_factory=lambda: Ewma(1.0))  # tokens, longest feed
    # the worker's reported demand: its live sessions per pass slot (shared with the link;
    # above 1 each session is drafted in about 1/demand of its passes)
    worker_demand: Ewma = field(default_factory=lambda: Ewma(0.0, weight=1.0))

    def observe_busy_pass(self, target: bool, requests: int, longest: int = 1) -> None:
        """A busy-site pass ran carrying ``requests`` requests (a target pass if ``target``),
        the longest of them feeding ``longest`` tokens."""
        if target:
            self.target_batch.update(float(requests))
            self.target_longest.update(float(longest))
        else:
            self.draft_batch.update(float(requests))

    @property
    def others_per_pass(self) -> float:
        """Other requests in a busy-site target pass (0 alone): each waits for any time a
        request's longer window adds to the pass."""
        return max(self.target_batch.get - 1.0, 0.0)

    @property
    def draft_price(self) -> float:
        """What one busy-site draft pass costs in request-time, per request drafting in it,
        relative to its own duration: 1 alone, ``target batch / draft batch`` under load."""
        return max(1.0, self.target_batch.get / max(self.draft_batch.get, 1.0))

    @classmethod
    def with_priors(cls, rtt_s: float = 0.05, target_s: float = 0.03, draft_s: float = 0.004,
                    verify_per_token_s: float = 0.0, rtt: Ewma | None = None,
                    worker_demand: Ewma | None = None) -> "Estimates":
        est = cls(rtt if rtt is not None else Ewma(rtt_s),
                  PassTime.with_prior(target_s, verify_per_token_s),
                  PassTime.with_prior(draft_s), Ewma(draft_s), AcceptanceModel(),
                  EntropyCalibration(), Ewma(0.0))
        if worker_demand is not None:
            est.worker_demand = worker_demand
        return est

    def for_worker(self, rtt: Ewma, worker_demand: Ewma) -> "Estimates":
        """The estimates of requests placed on one of several workers: the busy site's (pass
        times, batch sizes, latency credit) shared with every other request, the worker's own
        (its link's RTT and reported demand, the pace of its chains, how well its drafts are
        accepted and its entropy calibration) kept apart, so that each worker is judged on
        what it does."""
        return replace(self, rtt=rtt, worker_demand=worker_demand,
                       draft_interval=Ewma(self.draft_interval.prior),
                       acceptance=AcceptanceModel(), calibration=EntropyCalibration())

    @property
    def worker_draft_interval(self) -> float:
        """The expected time between a live chain's drafts: as observed, and never faster than
        a draft pass for every ``demand`` sessions when the worker reports it is over capacity
        (what it is about to be, before this request has seen it)."""
        return max(self.draft_interval.get,
                   self.draft_interval.prior * max(self.worker_demand.get, 1.0))
