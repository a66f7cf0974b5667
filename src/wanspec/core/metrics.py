"""Per-request metrics, recorded by the state machines from the ``now`` they are given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wanspec.core.actions import Site


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class RequestMetrics:
    """Counters and timestamps for one request.

    Time per output token (TPOT) follows the usual serving definition: the gaps between token
    arrivals after the first.  Tokens committed together by one verification share the gap
    since the previous commit equally, so p50/p95 describe per-token latency as a streaming
    client would experience it on average within a round.
    """

    start_time: float = 0.0
    end_time: float | None = None
    first_token_time: float | None = None
    committed_tokens: int = 0
    target_passes: int = 0
    draft_passes: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Site})
    drafted_tokens: int = 0  # draft tokens presented to a target verification
    accepted_tokens: int = 0
    verify_rounds: int = 0  # target passes that verified at least one draft token
    rejections: int = 0  # verifications that rejected a draft (the rest accepted all)
    tokens_from_verify: int = 0  # tokens committed by those rounds (accepted + correction/bonus)
    position_attempts: list[int] = field(default_factory=list)
    position_accepts: list[int] = field(default_factory=list)
    token_gaps: list[float] = field(default_factory=list)
    _last_commit: float | None = None

    def on_start(self, now: float) -> None:
        self.start_time = now

    def on_target_pass(self) -> None:
        self.target_passes += 1

    def on_draft_pass(self, site: Site, passes: int = 1) -> None:
        self.draft_passes[site.value] += passes

    def on_verify(self, window: int, accepted: int, committed: int) -> None:
        self.verify_rounds += 1
        if accepted < window:
            self.rejections += 1
        self.drafted_tokens += window
        self.accepted_tokens += accepted
        self.tokens_from_verify += committed
        attempts, accepts = self.position_attempts, self.position_accepts
        while len(attempts) < window:
            attempts.append(0)
            accepts.append(0)
        for i in range(window):
            attempts[i] += 1
        for i in range(min(accepted, window)):
            accepts[i] += 1

    def on_commit(self, n: int, now: float) -> None:
        if n <= 0:
            return
        if self.first_token_time is None:
            self.first_token_time = now
            n_gaps = n - 1
            gap = 0.0
        else:
            assert self._last_commit is not None
            n_gaps = n
            gap = (now - self._last_commit) / n
        self.token_gaps.extend([gap] * n_gaps)
        self.committed_tokens += n
        self._last_commit = now

    def on_finish(self, now: float) -> None:
        self.end_time = now

    # ---- derived ------------------------------------------------------------------------------
    @property
    def ttft(self) -> float:
        first = self.first_token_time if self.first_token_time is not None else self.start_time
        return first - self.start_time

    @property
    def wall_time(self) -> float:
        return (self.end_time if self.end_time is not None else self.start_time) - self.start_time

    @property
    def tpot_mean(self) -> float:
        return sum(self.token_gaps) / len(self.token_gaps) if self.token_gaps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def per_token_acceptance(self) -> float:
        """Acceptance probability per *tested* draft token (those up to the first rejection).

        Unlike accepted/drafted, this does not count drafts after a rejection, which the target
        never judged; it estimates the i.i.d. alpha of the SD analysis.
        """
        tested = self.accepted_tokens + self.rejections
        return self.accepted_tokens / tested if tested else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per verifying target pass (accepted drafts + the target's own token)."""
        return self.tokens_from_verify / self.verify_rounds if self.verify_rounds else 0.0

    def to_dict(self) -> dict[str, Any]:
        busy = self.draft_passes[Site.CONTROLLER.value]
        n = max(self.committed_tokens, 1)
        return {
            "committed_tokens": self.committed_tokens,
            "target_passes": self.target_passes,
            "draft_passes": dict(self.draft_passes),
            "busy_site_draft_passes_per_token": busy / n,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "per_token_acceptance": self.per_token_acceptance,
            "verify_rounds": self.verify_rounds,
            "verify_rejections": self.rejections,
            "mean_acceptance_length": self.mean_acceptance_length,
            "accepted_per_position": list(self.position_accepts),
            "per_position_acceptance": [
                a / t if t else 0.0 for a, t in zip(self.position_accepts, self.position_attempts)
            ],
            "ttft_s": self.ttft,
            "tpot_s_mean": self.tpot_mean,
            "tpot_s_p50": percentile(self.token_gaps, 50),
            "tpot_s_p95": percentile(self.token_gaps, 95),
            "wall_s": self.wall_time,
        }
