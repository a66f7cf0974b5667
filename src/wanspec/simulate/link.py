"""The in-process transport's WAN latency model as a pure object, plus exact frame sizes.

The arithmetic itself, :class:`~wanspec.transport.latency.FifoLink`, is the very object the
in-process transport schedules its asyncio timers from, so the simulator's arrival times are the
transport's, bit for bit (``tests/simulate/test_link.py`` checks this against the transport).

Frame sizes are the real wire sizes: 4-byte header + the msgpack body that
:func:`wanspec.protocol.codec.encode_message` would produce, packed with the same packer (a
hand-written field list for the two hot message types, the generic encoder for the rest).
"""

from __future__ import annotations

from typing import Final

import msgpack

from wanspec.protocol.codec import encode_message
from wanspec.protocol.messages import Commit, Drafts, Message
from wanspec.transport.latency import FifoLink, LinkParams, link_pair

__all__ = ["HEADER_BYTES", "FifoLink", "LinkParams", "frame_size", "link_pair"]

HEADER_BYTES: Final = 4
_packb: Final = msgpack.packb


def frame_size(msg: Message) -> int:
    """Bytes ``encode_frame(msg)`` puts on the wire (header included)."""
    # isinstance (not ``type(msg) is``): it also narrows the type, which compiled code uses
    if isinstance(msg, Drafts):
        tokens, entropy, top_prob = msg.tokens, msg.entropy, msg.top_prob
        if len(tokens) == 1 and len(entropy) == 1 and len(top_prob) == 1:
            ent: object = entropy[0]  # (object: the check must see the value's own type)
            top: object = top_prob[0]
            if type(ent) is float and type(top) is float:
                # the hottest message: [3, rid, epoch, base, [tok], [entropy], [top_prob]] with
                # floats packed as float64 (9 bytes), so only the four integers vary in size
                rid, epoch, base, tok = msg.rid, msg.epoch, msg.base, tokens[0]
                try:
                    if (0 <= rid < 65536 and 0 <= epoch < 65536 and 0 <= base < 65536
                            and 0 <= tok < 65536):
                        return (27 + _INT_BYTES[rid] + _INT_BYTES[epoch] + _INT_BYTES[base]
                                + _INT_BYTES[tok])
                except TypeError:  # not integers (a float index): let msgpack size the message
                    pass
                else:
                    return 27 + _isz(rid) + _isz(epoch) + _isz(base) + _isz(tok)
        body = _packb([3, msg.rid, msg.epoch, msg.base, msg.tokens, msg.entropy,
                       msg.top_prob], use_bin_type=True)
    elif isinstance(msg, Commit):
        size = _commit_size(msg)
        if size:
            return size
        body = _packb([4, msg.rid, msg.epoch, msg.base, msg.tokens], use_bin_type=True)
    else:
        body = encode_message(msg)
    return HEADER_BYTES + len(body)


def _commit_size(msg: Commit) -> int:
    """``frame_size`` of a Commit whose fields are all plain ints (else 0): once per commit."""
    tokens = msg.tokens
    n = len(tokens)
    if n >= 65536:
        return 0
    # header + fixarray(5) + tag + rid + epoch + base + token array header + tokens
    size = HEADER_BYTES + 2 + (1 if n < 16 else 3)
    for v in (msg.rid, msg.epoch, msg.base, *tokens):
        if type(v) is not int:
            return 0
        size += _INT_BYTES[v] if 0 <= v < 65536 else _isz(v)
    return size


# msgpack's size of each integer 0..65535: positive fixint, uint8, uint16
_INT_BYTES: Final = bytes(1 if v < 128 else 2 if v < 256 else 3 for v in range(65536))


def _isz(v: int) -> int:
    """Bytes msgpack uses for the integer ``v``."""
    if 0 <= v < 65536:
        return _INT_BYTES[v]
    if v < 0:
        return 1 if v >= -32 else 2 if v >= -128 else 3 if v >= -32768 else 5 if v >= -2**31 else 9
    return 5 if v < 4294967296 else 9
