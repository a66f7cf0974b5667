"""The in-process transport's WAN latency model as a pure object, plus exact frame sizes.

The arithmetic itself, :class:`~wanspec.transport.latency.FifoLink`, is the very object the
in-process transport schedules its asyncio timers from, so the simulator's arrival times are the
transport's, bit for bit (``tests/simulate/test_link.py`` checks this against the transport).
Frame sizes are the real wire sizes: what :func:`wanspec.protocol.codec.encode_frame` produces.
"""

from __future__ import annotations

from wanspec.protocol.codec import HEADER_BYTES, encode_message
from wanspec.protocol.messages import Message
from wanspec.transport.latency import FifoLink, LinkParams, link_pair

__all__ = ["FifoLink", "LinkParams", "frame_size", "link_pair"]


def frame_size(msg: Message) -> int:
    """Bytes ``encode_frame(msg)`` puts on the wire (header included)."""
    return HEADER_BYTES + len(encode_message(msg))
