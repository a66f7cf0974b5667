"""The WAN latency model as pure arithmetic: one ordered direction of a link.

Shared by the in-process transport (which turns arrival times into asyncio timers) and the
discrete-event simulator (which puts them on its event heap), so both see bit-identical delays
for the same pushes.  Per direction (a FIFO stream, like one TCP/QUIC stream)::

    tx_done = max(now, link_free) + bytes * 8 / bandwidth      # only if bandwidth > 0
    arrival = max(previous_arrival,
                  tx_done + one_way + U(0, jitter) + (spike if rand < spike_prob))
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from wanspec.errors import WanspecError


@dataclass(frozen=True)
class LinkParams:
    """WAN characteristics of an in-process link (all times in milliseconds)."""

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0  # extra one-way delay, uniform in [0, jitter_ms], per message
    bandwidth_bps: float = 0.0  # per direction; 0 = unlimited
    spike_prob: float = 0.0  # probability that a message is hit by a delay spike (loss + resend)
    spike_ms: float = 0.0
    up_share: float = 0.5  # fraction of the RTT spent controller -> worker
    seed: int = 0
    # host work each end of a message does in a real transport's stack and this link does not:
    # charged to the sending and the receiving site by a loop that charges the host, else unused
    # (transport/stack_cost.py measures it)
    stack_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rtt_ms", "jitter_ms", "bandwidth_bps", "spike_ms", "stack_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise WanspecError(f"link {name} must be a non-negative number, got {value!r}")
        for name in ("spike_prob", "up_share"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise WanspecError(f"link {name} must be between 0 and 1, got {value!r}")

    @property
    def up_ms(self) -> float:
        """One-way base delay controller -> worker."""
        return self.rtt_ms * self.up_share

    @property
    def down_ms(self) -> float:
        """One-way base delay worker -> controller."""
        return self.rtt_ms * (1.0 - self.up_share)


class FifoLink:
    """One direction of the link (a FIFO stream); :meth:`push` returns the arrival time (s)."""

    def __init__(self, params: LinkParams, one_way_ms: float, name: str) -> None:
        self._one_way_s = one_way_ms / 1000.0
        self._rng = random.Random(f"wanspec-link:{params.seed}:{name}")
        self._bw = params.bandwidth_bps
        self._jitter_ms = params.jitter_ms
        self._spike_prob = params.spike_prob
        self._spike_ms = params.spike_ms
        self._link_free = -math.inf
        self._last_arrival = -math.inf
        self.messages = 0
        self.bytes = 0

    def push(self, now: float, nbytes: int) -> float:
        """Send a frame of ``nbytes`` (header included) at ``now``; returns when it arrives."""
        self.messages += 1
        self.bytes += nbytes
        tx_done = now
        if self._bw > 0:
            tx_done = max(now, self._link_free) + nbytes * 8.0 / self._bw
            self._link_free = tx_done
        delay = self._one_way_s
        if self._jitter_ms > 0:
            delay += self._rng.uniform(0.0, self._jitter_ms) / 1000.0
        if self._spike_prob > 0 and self._rng.random() < self._spike_prob:
            delay += self._spike_ms / 1000.0
        arrival = max(self._last_arrival, tx_done + delay)
        self._last_arrival = arrival
        return arrival

    def eof_arrival(self, now: float) -> float:
        """When a close sent at ``now`` reaches the peer: after the data in flight, no jitter."""
        self._last_arrival = max(self._last_arrival, now + self._one_way_s)
        return self._last_arrival


def link_pair(params: LinkParams) -> tuple[FifoLink, FifoLink]:
    """``(up, down)``: controller->worker and worker->controller, as ``inproc_pair`` builds them."""
    return FifoLink(params, params.up_ms, "up"), FifoLink(params, params.down_ms, "down")
