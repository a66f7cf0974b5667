"""The in-process transport's WAN latency model as a pure object, plus exact frame sizes.

Why a copy and not a refactor of :mod:`wanspec.transport.inproc`: its ``_Pipe`` is bound to
asyncio timers; the simulator needs only the arithmetic.  :class:`FifoLink` performs the very
same computation with the very same random draws (same ``random.Random`` seed string, same order
of ``uniform``/``random`` calls), so for the same pushes it returns bit-identical arrival times;
``tests/simulate/test_link.py`` checks this against ``_Pipe`` itself.  Per direction::

    tx_done = max(now, link_free) + bytes * 8 / bandwidth      # only if bandwidth > 0
    arrival = max(previous_arrival,
                  tx_done + one_way + U(0, jitter) + (spike if rand < spike_prob))

Frame sizes are the real wire sizes: 4-byte header + the msgpack body that
:func:`wanspec.protocol.codec.encode_message` would produce, packed with the same packer (a
hand-written field list for the two hot message types, the generic encoder for the rest).
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack

from wanspec.protocol.codec import encode_message
from wanspec.protocol.messages import Commit, Drafts
from wanspec.transport.inproc import LinkParams

HEADER_BYTES = 4
_packb = msgpack.packb


def frame_size(msg: Any) -> int:
    """Bytes ``encode_frame(msg)`` puts on the wire (header included)."""
    tp = type(msg)
    if (tp is Drafts and len(msg.tokens) == 1 and len(msg.entropy) == 1
            and len(msg.top_prob) == 1 and type(msg.entropy[0]) is float
            and type(msg.top_prob[0]) is float):
        # the hottest message: [3, rid, epoch, base, [tok], [entropy], [top_prob]] with floats
        # packed as float64 (9 bytes), so only the four integers vary in size
        return 27 + _isz(msg.rid) + _isz(msg.epoch) + _isz(msg.base) + _isz(msg.tokens[0])
    if tp is Drafts:
        body = _packb([3, msg.rid, msg.epoch, msg.base, msg.tokens, msg.entropy,
                       msg.top_prob], use_bin_type=True)
    elif tp is Commit:
        body = _packb([4, msg.rid, msg.epoch, msg.base, msg.tokens], use_bin_type=True)
    else:
        body = encode_message(msg)
    return HEADER_BYTES + len(body)


def _isz(v: int) -> int:
    """Bytes msgpack uses for the integer ``v``."""
    if v < 0:
        return 1 if v >= -32 else 2 if v >= -128 else 3 if v >= -32768 else 5 if v >= -2**31 else 9
    if v < 128:
        return 1
    if v < 256:
        return 2
    if v < 65536:
        return 3
    return 5 if v < 4294967296 else 9


class FifoLink:
    """One direction of the link (a FIFO stream); :meth:`push` returns the arrival time (s)."""

    __slots__ = ("_one_way_s", "_rng", "_bw", "_jitter_ms", "_spike_prob", "_spike_ms",
                 "_link_free", "_last_arrival", "messages", "bytes")

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


def link_pair(params: LinkParams) -> tuple[FifoLink, FifoLink]:
    """``(up, down)``: controller->worker and worker->controller, as ``inproc_pair`` builds them."""
    return FifoLink(params, params.up_ms, "up"), FifoLink(params, params.down_ms, "down")
