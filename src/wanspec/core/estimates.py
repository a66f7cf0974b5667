"""Online estimates the controller's policies use: RTT, pass times, draft arrival rate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
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


@dataclass(slots=True)
class LinkEstimates:
    """What the controller believes about the link and both devices (seconds)."""

    rtt: Ewma
    target_pass: Ewma
    local_draft_pass: Ewma
    draft_interval: Ewma  # time between consecutive drafts of a live remote chain
    acceptance: Ewma  # per-token acceptance of the worker's drafts (from verifications)

    @classmethod
    def with_priors(cls, rtt_s: float = 0.05, target_s: float = 0.03, draft_s: float = 0.004) -> "LinkEstimates":
        return cls(Ewma(rtt_s), Ewma(target_s), Ewma(draft_s), Ewma(draft_s), Ewma(0.7, 0.1))
