"""A device's pass duration against the tokens a pass feeds, fitted from its own passes.

Both sites read it: the busy site predicts how much slower its passes get with more requests
(:mod:`wanspec.core.admission`), the worker how much each branch lane adds to a draft pass
(:mod:`wanspec.core.capacity`).  The roofline is flat while a pass is memory-bound and rises once
it is compute-bound; a local linear fit over the last passes follows whichever regime the device
is in -- an accelerator's hundreds of nearly free sequences, or a CPU's few.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class PassTimes:
    """Pass duration vs tokens fed, ``a + b * tokens``, fitted over the last ``window`` passes."""

    window: int = 64
    samples: deque[tuple[int, float]] = field(default_factory=deque)
    _fitted: tuple[float, float, float] | None = field(default=None, repr=False, compare=False)

    def add(self, tokens: int, seconds: float) -> None:
        self.samples.append((tokens, seconds))
        while len(self.samples) > self.window:
            self.samples.popleft()
        self._fitted = None

    def fit(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds at zero tokens and per token; None before the first pass."""
        line = self._line()
        if line is None:
            return None
        mean_x, mean_y, slope = line
        return mean_y - slope * mean_x, slope

    def predict(self, tokens: float) -> float | None:
        """Expected seconds of a pass feeding ``tokens``; None before the first pass."""
        line = self._line()
        if line is None:
            return None
        mean_x, mean_y, slope = line
        return max(mean_y + slope * (tokens - mean_x), 0.0)

    def _line(self) -> tuple[float, float, float] | None:
        """Least squares through the samples: their means and the slope.  One pass size seen
        so far: no slope to learn yet, assume none (memory-bound).  Never negative: a pass never
        gets cheaper with more tokens."""
        if not self.samples:
            return None
        if self._fitted is not None:  # (read for every branch the worker considers)
            return self._fitted
        n = len(self.samples)
        mean_x = sum(x for x, _ in self.samples) / n
        mean_y = sum(y for _, y in self.samples) / n
        var = sum((x - mean_x) ** 2 for x, _ in self.samples)
        slope = (sum((x - mean_x) * (y - mean_y) for x, y in self.samples) / var) if var else 0.0
        self._fitted = mean_x, mean_y, max(slope, 0.0)
        return self._fitted
