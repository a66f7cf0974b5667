"""SLO-aware admission at the busy site: how many requests may decode at once.

Batching more requests into each pass raises the busy site's throughput but slows every pass,
and so every running request's time per output token (TPOT).  With a TPOT target (the
operator's SLO), a request is admitted only while the running ones are predicted to stay within
it; otherwise it waits in a first-come queue -- it is never refused -- and its wait shows up in
its time to first token, not in the TPOT of the others.

The prediction follows WISP's verification-time estimator (Li et al., SIGMETRICS 2026), learned
online from this accelerator's own passes:

* :class:`~wanspec.core.passtimes.PassTimes` fits a pass's duration as ``a + b * tokens`` by
  least squares over the last passes (the roofline is flat while memory-bound and rises once
  compute-bound; a local linear fit follows whichever regime the load is in);
* :class:`Admission` observes the running requests' TPOT (each commit reports its tokens) and
  predicts the TPOT with ``k`` more requests as the observed TPOT scaled by how much longer a
  pass carrying their tokens too would take: ``tpot * t(tokens * (n + k) / n) / t(tokens)``.

Nothing here waits or sleeps: adapters call :meth:`Admission.arrive`, :meth:`Admission.leave`,
:meth:`Admission.on_pass` and :meth:`Admission.on_commit`, and start the requests that
:meth:`Admission.admit` returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Hashable

from wanspec.core.passtimes import PassTimes

__all__ = ["Admission", "PassTimes"]


@dataclass
class Admission:
    """First-come admission under a TPOT target (``slo_tpot_s`` None: admit up to the cap)."""

    slo_tpot_s: float | None
    max_running: int = 256
    passes: PassTimes = field(default_factory=PassTimes)
    tpot_weight: float = 0.1  # of each new TPOT observation in the running average
    running: set[Hashable] = field(default_factory=set)
    waiting: deque[Hashable] = field(default_factory=deque)
    tpot_s: float | None = None  # observed TPOT of the running requests (moving average)
    tokens_per_pass: float | None = None  # tokens per target pass at the observed load
    observed_running: int = 0  # how many were running when tpot_s was last updated
    _last_commit: dict[Hashable, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slo_tpot_s is not None and not self.slo_tpot_s > 0:
            raise ValueError("the TPOT target must be > 0 s")
        if self.max_running < 1:
            raise ValueError("max_running must be >= 1")

    # ---- events ---------------------------------------------------------------------------------
    def arrive(self, key: Hashable) -> None:
        self.waiting.append(key)

    def leave(self, key: Hashable) -> None:
        """A request finished, failed or was cancelled, admitted or still waiting."""
        self.running.discard(key)
        self._last_commit.pop(key, None)
        try:
            self.waiting.remove(key)
        except ValueError:
            pass

    def on_pass(self, tokens: int, seconds: float) -> None:
        """A target pass ran: ``tokens`` fed in all, ``seconds`` on the accelerator."""
        self.passes.add(tokens, seconds)
        w = self.tpot_weight
        self.tokens_per_pass = (tokens if self.tokens_per_pass is None
                                else (1 - w) * self.tokens_per_pass + w * tokens)

    def on_commit(self, key: Hashable, tokens: int, now: float) -> None:
        """Request ``key`` committed ``tokens``: one TPOT observation (the gap per token)."""
        last = self._last_commit.get(key)
        self._last_commit[key] = now
        if last is None or tokens < 1 or key not in self.running:
            return  # the first commit ends its TTFT, not a TPOT gap
        gap = (now - last) / tokens
        w = self.tpot_weight
        self.tpot_s = gap if self.tpot_s is None else (1 - w) * self.tpot_s + w * gap
        self.observed_running = len(self.running)

    # ---- decisions ------------------------------------------------------------------------------
    def predicted_tpot(self, running: int) -> float | None:
        """Expected TPOT with ``running`` requests, from the observed one; None if unknown."""
        if self.tpot_s is None or self.tokens_per_pass is None or not self.observed_running:
            return None
        now_s = self.passes.predict(self.tokens_per_pass)
        then_s = self.passes.predict(self.tokens_per_pass * running / self.observed_running)
        if not now_s or then_s is None:
            return None
        return self.tpot_s * then_s / now_s

    def _meetable(self) -> bool:
        """Whether one request alone is expected to meet the target: if not, holding others
        back would only serialise them for nothing, so admission stops holding."""
        alone = self.predicted_tpot(1)
        return alone is None or alone <= self.slo_tpot_s  # type: ignore[operator]

    def admit(self) -> list[Hashable]:
        """The waiting requests to start now, first come first served."""
        out = []
        while self.waiting and len(self.running) < self.max_running:
            if self.running and self.slo_tpot_s is not None and self._meetable():
                predicted = self.predicted_tpot(len(self.running) + 1)
                if predicted is not None and predicted > self.slo_tpot_s:
                    break  # the running requests would miss their target: wait
            key = self.waiting.popleft()
            self.running.add(key)
            out.append(key)
        return out
