"""The device timing model that every model forward pass goes through.

A :class:`Device` is one site's accelerator.  Passes on a device run one at a time (an asyncio
lock), which is what makes a target and a local draft sharing the busy site's GPU contend for it
truthfully.  Timing is either

* **measured**: the pass occupies the device for its real wall time; or
* **emulated**: the pass occupies the device for a configured cost (:class:`PassCost`) and its
  result is released only when that cost has elapsed on the loop's clock.  With a
  :class:`~wanspec.timing.clock.VirtualTimeLoop` the real compute time is invisible, so a 2-core
  CPU can emulate a deployment of GPU-sized models exactly and deterministically.

The forward itself always runs off the event loop, on the model's own single-thread executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from wanspec.errors import WanspecError
from wanspec.timing import clock

T = TypeVar("T")


@dataclass(frozen=True)
class PassCost:
    """Emulated cost of one forward pass: ``base_ms + per_token_ms * (tokens fed - 1)``.

    The per-token term models verification windows (and catch-up feeds) costing a little more
    than a single-token decode; on data-centre GPUs decoding is memory-bound, so it is small.  A
    batched pass counts the tokens of all its requests: the weights are read once per pass and
    each token adds its compute (a linear stand-in for a roofline; attention over each request's
    context is not modelled).
    """

    base_ms: float
    per_token_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.base_ms < 0 or self.per_token_ms < 0:
            raise WanspecError("device costs must be >= 0 ms")

    def seconds(self, n_tokens: int) -> float:
        return (self.base_ms + self.per_token_ms * max(n_tokens - 1, 0)) / 1000.0


@dataclass
class DeviceStats:
    passes: int = 0
    sequences: int = 0  # requests carried, summed over passes (batching: sequences / passes)
    busy_s: float = 0.0  # time the device was occupied (emulated or measured)
    compute_s: float = 0.0  # real wall time spent computing (the host's own cost)
    by_model: dict[str, int] = field(default_factory=dict)


class Device:
    """One site's accelerator: serialises passes and accounts for their time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = DeviceStats()
        self._lock: asyncio.Lock | None = None

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def run(
        self,
        fn: Callable[[], T],
        *,
        executor: concurrent.futures.Executor,
        cost: PassCost | None,
        n_tokens: int,
        label: str = "",
        sequences: int = 1,
    ) -> T:
        """Run ``fn`` (a forward pass) off-loop; emulated if ``cost`` is given, else measured."""
        loop = asyncio.get_running_loop()
        async with self._get_lock():
            start = loop.time()
            t0 = time.perf_counter()
            with clock.hold():
                result = await loop.run_in_executor(executor, fn)
            compute = time.perf_counter() - t0
            if cost is not None:
                await clock.sleep_until(start + cost.seconds(n_tokens))
            self.stats.passes += 1
            self.stats.sequences += sequences
            self.stats.busy_s += loop.time() - start
            self.stats.compute_s += compute
            if label:
                self.stats.by_model[label] = self.stats.by_model.get(label, 0) + 1
        return result
