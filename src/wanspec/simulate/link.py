"""The in-process transport's WAN latency model as a pure object, plus exact frame sizes.

The arithmetic itself, :class:`~wanspec.transport.latency.FifoLink`, is the very object the
in-process transport schedules its asyncio timers from, so the simulator's arrival times are the
transport's, bit for bit (``tests/simulate/test_link.py`` checks this against the transport).

Frame sizes are the real wire sizes: 4-byte header + the msgpack body that
:func:`wanspec.protocol.codec.encode_message` would produce, packed with the same packer (a
hand-written field list for the two hot message types, the generic encoder for the rest).
"""

from __future__ import annotations

from typing import Any

import msgpack

from wanspec.protocol.codec import encode_message
from wanspec.protocol.messages import Commit, Drafts
from wanspec.transport.latency import FifoLink, LinkParams, link_pair

__all__ = ["HEADER_BYTES", "FifoLink", "LinkParams", "frame_size", "link_pair"]

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
