"""A device's pass duration against the tokens a pass feeds, fitted from its own passes.

Both sites read it: the busy site predicts how much slower its passes get with more requests
(:mod:`wanspec.core.admission`), the worker how much each branch lane adds to a draft pass
(:mod:`wanspec.core.capacity`, fitted against the sequences a pass carries).  The roofline is
flat while a pass is memory-bound and rises once it is compute-bound; a local linear fit over
the last passes follows whichever regime the device is in -- an accelerator's hundreds of nearly
free sequences, or a CPU's few.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PassTimes:
    """Pass duration vs tokens fed, ``a + b * tokens``, fitted over the last ``window`` passes.

    The least-squares sums are kept as passes come and go, so a fit costs the same whatever the
    window: the worker reads it for every branch it considers."""

    window: int = 64
    samples: deque[tuple[int, float]] = field(default_factory=deque, init=False)
    _sx: int = field(default=0, repr=False)  # sums over the samples: x, x^2 (exact integers)
    _sxx: int = field(default=0, repr=False)
    _sy: float = field(default=0.0, repr=False)  # y and x*y
    _sxy: float = field(default=0.0, repr=False)

    def add(self, tokens: int, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0.0:
            return  # (a clock that went wrong: it would poison the sums)
        self.samples.append((tokens, seconds))
        self._sx += tokens
        self._sxx += tokens * tokens
        self._sy += seconds
        self._sxy += tokens * seconds
        while len(self.samples) > self.window:
            x, y = self.samples.popleft()
            self._sx -= x
            self._sxx -= x * x
            self._sy -= y
            self._sxy -= x * y

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
        n = len(self.samples)
        if not n:
            return None
        var = n * self._sxx - self._sx * self._sx  # n^2 x the variance of x, exactly
        slope = (n * self._sxy - self._sx * self._sy) / var if var else 0.0
        return self._sx / n, self._sy / n, max(slope, 0.0)
