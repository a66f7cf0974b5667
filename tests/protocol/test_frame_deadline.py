"""FrameDecoder bounds a half-received frame in time as well as in size."""

from __future__ import annotations

import pytest

from wanspec.protocol.codec import FrameDecoder, ProtocolError, encode_frame
from wanspec.protocol.messages import Ping, SessionStart


def test_no_deadline_without_a_partial_frame_or_without_a_timeout():
    frame = encode_frame(Ping(1.0))
    assert FrameDecoder(frame_timeout=1.0).deadline is None
    d = FrameDecoder(frame_timeout=1.0)
    assert list(d.feed(frame, now=5.0)) == [Ping(1.0)]
    assert d.deadline is None
    untimed = FrameDecoder()
    untimed.feed(frame[:3], now=5.0)
    assert untimed.deadline is None
    untimed.check_deadline(1e9)  # no limit: never late


def test_a_trickled_frame_is_late_from_its_first_byte():
    frame = encode_frame(SessionStart(1, tuple(range(500))))
    d = FrameDecoder(frame_timeout=2.0)
    for i in range(20):  # one byte a second: the deadline stays where the frame began
        list(d.feed(frame[i : i + 1], now=10.0 + 0.1 * i))
        assert d.deadline == 12.0
    d.check_deadline(11.99)
    with pytest.raises(ProtocolError, match="20 bytes of a frame"):
        d.check_deadline(12.0)
    assert d.buffered == 0 and d.deadline is None


def test_the_rest_of_a_chunk_starts_the_next_frames_clock():
    a, b = encode_frame(Ping(1.0)), encode_frame(Ping(2.0))
    d = FrameDecoder(frame_timeout=1.0)
    d.feed(a[:2], now=0.0)
    assert d.deadline == 1.0
    assert list(d.feed(a[2:] + b[:3], now=0.5)) == [Ping(1.0)]  # b's first bytes came at 0.5
    assert d.deadline == 1.5
    assert list(d.feed(b[3:], now=1.2)) == [Ping(2.0)]
    assert d.deadline is None
    d.check_deadline(100.0)  # nothing held: nothing late
