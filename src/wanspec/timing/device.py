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
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from wanspec.core.rounds import round_shapes
from wanspec.errors import WanspecError
from wanspec.timing import clock

T = TypeVar("T")


@dataclass(frozen=True)
class PassCost:
    """Emulated cost of one forward pass, in a roofline form.

    A pass reads the weights once and each carried request's KV cache (memory-bound), and does
    ``2 x parameters`` FLOPs per fed token (compute-bound); it takes the larger of the two, plus
    a little per request carried (sampling, attention set-up, bookkeeping)::

        memory  = base_ms + per_token_ms * (longest window - 1) + kv_ms_per_ktoken * context / 1000
        compute = compute_ms_per_token * tokens fed (all requests)
        pass    = max(memory, compute) + per_sequence_ms * (requests - 1)

    * ``base_ms``: a one-token decode of one request.
    * ``per_token_ms``: what each further token of a window adds on its own request's critical
      path (verification windows and catch-up feeds cost a little more than a decode).  Windows
      of different requests in one pass run side by side, so the longest one counts.
    * ``kv_ms_per_ktoken``: reading 1,000 tokens of KV cache (``context``: every carried
      request's cached length plus what it feeds).
    * ``compute_ms_per_token``: the compute floor; a pass of many tokens (large batches, long
      prefills) becomes compute-bound.
    * ``per_sequence_ms``: each request beyond the first.

    With one request and no KV term this is the familiar ``base + per_token * (n - 1)``.
    docs/results.md calibrates the defaults against published measurements.
    """

    base_ms: float
    per_token_ms: float = 0.0
    kv_ms_per_ktoken: float = 0.0
    compute_ms_per_token: float = 0.0
    per_sequence_ms: float = 0.0

    def __post_init__(self) -> None:
        if min(self.base_ms, self.per_token_ms, self.kv_ms_per_ktoken,
               self.compute_ms_per_token, self.per_sequence_ms) < 0:
            raise WanspecError("device costs must be >= 0 ms")

    def seconds(self, n_tokens: int, *, longest: int | None = None, context: int = 0,
                sequences: int = 1) -> float:
        """A pass feeding ``n_tokens`` in all for ``sequences`` requests, ``longest`` of them for
        one request (default: one request feeds them all), over ``context`` tokens of KV."""
        longest = n_tokens if longest is None else longest
        memory = (self.base_ms + self.per_token_ms * max(longest - 1, 0)
                  + self.kv_ms_per_ktoken * context / 1000.0)
        compute = self.compute_ms_per_token * n_tokens
        return (max(memory, compute) + self.per_sequence_ms * max(sequences - 1, 0)) / 1000.0


def round_pass_shapes(actions: Sequence[Any]) -> list[dict[str, int]]:
    """:func:`pass_shape` of each pass of ``actions`` (``RunDraft`` actions) run as rounds
    (``RunDraft.count``; one pass each for plain passes): the first pass, then the rest."""
    return [pass_shape(feeds) for feeds in round_shapes(actions)]


def pass_shape(feeds: Sequence[Any]) -> dict[str, int]:
    """What a pass's cost depends on (the keyword arguments of :meth:`PassCost.seconds`), for
    ``feeds`` run as one pass, each with ``start`` and ``tokens`` (a ``RunTarget`` or
    ``RunDraft``): tokens fed, sequences, the longest feed, KV read.  The one rule every driver
    charges by: the runtime's placed models and both simulators."""
    return {"n_tokens": sum(len(f.tokens) for f in feeds), "sequences": len(feeds),
            "longest": max(len(f.tokens) for f in feeds),
            "context": sum(f.start + len(f.tokens) for f in feeds)}


# The documented deployment (docs/results.md, "What the default device costs represent"): a
# 70B-class target in 16-bit weights on 4 A100-80GB (tensor parallel 4) and a 1B-class draft on
# one, fitted to published per-token latencies by batch size (Llama-2-70B, lmdeploy; 30 ms at
# batch 1).  Compute: 2 x parameters FLOPs per token at ~65% of the dense BF16 peak; KV: 320 KiB
# per token of a Llama-70B cache (80 layers x 8 KV heads x 128 x 2 x 2 B) read at about half the
# HBM bandwidth; the draft's terms scaled from the same recipe (32 KiB per token).
DEFAULT_TARGET_COST = PassCost(30.0, 0.5, kv_ms_per_ktoken=0.08, compute_ms_per_token=0.169,
                               per_sequence_ms=0.10)
DEFAULT_DRAFT_COST = PassCost(4.0, 0.0, kv_ms_per_ktoken=0.032, compute_ms_per_token=0.016,
                              per_sequence_ms=0.01)


@dataclass
class DeviceStats:
    passes: int = 0
    sequences: int = 0  # requests carried, summed over passes (batching: sequences / passes)
    busy_s: float = 0.0  # time the device was occupied (emulated or measured)
    busy_by_model: dict[str, float] = field(default_factory=dict)  # busy_s split by label
    compute_s: float = 0.0  # real wall time spent computing (the host's own cost)
    by_model: dict[str, int] = field(default_factory=dict)
    # CPU time of the event loop's thread while the device sat idle, from the end of each pass
    # to the start of the next: the host work the site's accelerator waited for (an upper bound
    # on it: what the loop did meanwhile for anything else, between requests, or while a
    # request waited for the network, counts too; what it did while a pass ran, overlapped,
    # does not)
    idle_loop_cpu_s: float = 0.0
    # passes carrying a request of the pass before that went on at once (queued before the
    # accelerator went idle: the next verification after a commit, a local draft's next token;
    # also a rider, or a request whose drafts arrived within those few turns of the loop), and
    # the time from that pass's end to their start: the host work between two passes of a
    # request's critical path, the device idle meanwhile (set by the shared accelerator; a
    # lower bound on what passes waited on the host for: a pass that a worker's message or a
    # timer started after the accelerator went idle is not in it)
    turnarounds: int = 0
    turnaround_s: float = 0.0

    def report(self, since: "DeviceStats | None" = None) -> dict[str, Any]:
        """What a result reports of the device: its counts since ``since`` (a :meth:`copy`
        taken earlier; None: since it started) and its passes by model so far."""
        b = since or DeviceStats()
        return {"passes": self.passes - b.passes, "busy_s": self.busy_s - b.busy_s,
                "compute_s": self.compute_s - b.compute_s,
                "idle_loop_cpu_s": self.idle_loop_cpu_s - b.idle_loop_cpu_s,
                "turnarounds": self.turnarounds - b.turnarounds,
                "turnaround_s": self.turnaround_s - b.turnaround_s,
                "passes_by_model": dict(self.by_model)}

    def copy(self) -> "DeviceStats":
        return dataclasses.replace(self, busy_by_model=dict(self.busy_by_model),
                                   by_model=dict(self.by_model))


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


class Device:
    """One site's accelerator: serialises passes and accounts for their time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = DeviceStats()
        self._lock: asyncio.Lock | None = None
        self._idle_since: float | None = None  # loop thread's CPU clock when the last pass ended

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
        longest: int | None = None,
        context: int = 0,
        more: Sequence[dict[str, int]] = (),
    ) -> T:
        """Run ``fn`` (a forward pass) off-loop; emulated if ``cost`` is given, else measured.

        ``more``: the shapes (:func:`pass_shape`) of further passes ``fn`` runs after the first
        (a local draft round, ``RunDraft.count``): charged one after the other, and counted.
        With the host charged the round as a whole takes at least its real compute (a floor on
        the round, not on each of its passes)."""
        loop = asyncio.get_running_loop()
        async with self._get_lock():
            start = loop.time()
            if self._idle_since is not None:
                self.stats.idle_loop_cpu_s += time.thread_time() - self._idle_since
            # timed in the thread: the awaiting task may resume later than the pass ends (with
            # the host charged, when its site is busy), and that wait is not the pass's compute
            result, compute = await clock.off_loop(executor, lambda: _timed(fn))
            if cost is not None:
                seconds = cost.seconds(n_tokens, longest=longest, context=context,
                                       sequences=sequences)
                seconds += sum(cost.seconds(**shape) for shape in more)
                if clock.charges_host():  # a floor, as on a real site: slower compute shows
                    seconds = max(seconds, compute)
                await clock.sleep_until(start + seconds)
            passes = 1 + len(more)
            self.stats.passes += passes
            self.stats.sequences += sequences + sum(shape["sequences"] for shape in more)
            busy = loop.time() - start
            self.stats.busy_s += busy
            self.stats.compute_s += compute
            if label:
                self.stats.by_model[label] = self.stats.by_model.get(label, 0) + passes
                self.stats.busy_by_model[label] = self.stats.busy_by_model.get(label, 0.0) + busy
            self._idle_since = time.thread_time()
        return result
