"""Framing and message codec: round trips, incremental feeding, and refusal of bad input."""

from __future__ import annotations

import struct

import msgpack
import pytest

from wanspec.protocol.codec import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    check_hello,
    decode_message,
    encode_frame,
    encode_message,
)
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Ping,
    Pong,
    SessionStart,
)

SAMPLES = [
    Hello(version=PROTOCOL_VERSION, role="worker", model="draft-1b", tokenizer="sha256:ab12",
          vocab_size=32000, capabilities=("drafts", "entropy")),
    SessionStart(rid=7, prompt=(1, 2, 3, 50000), temperature=0.7, top_k=40, top_p=0.9, seed=11,
                 lookahead=12, max_position=4096),
    Drafts(rid=7, epoch=3, base=10, tokens=(5, 6, 7), entropy=(0.1, 0.25, 1.5),
           top_prob=(0.9, 0.8, 0.3)),
    Commit(rid=7, epoch=3, base=10, tokens=(5, 6)),
    Cancel(rid=7, reason="client went away"),
    Ping(t=123.456, seq=9),
    Pong(t=123.456, seq=9),
    Pong(t=123.456, seq=10, busy=0.625, demand=2.5),  # a worker's, with its load
    Error(message="tokenizer mismatch", rid=-1, code="incompatible", details={"peer": "x"}),
    # defaults and empty containers
    Drafts(rid=0, epoch=0, base=0, tokens=()),
    Hello(version=1, role="controller"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_every_message_type(msg):
    assert decode_message(encode_message(msg)) == msg
    decoded = next(iter(FrameDecoder().feed(encode_frame(msg))))
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_every_message_type_is_covered():
    assert {type(m) for m in SAMPLES} == {
        Hello, SessionStart, Drafts, Commit, Cancel, Ping, Pong, Error,
    }


def test_byte_by_byte_feeding_yields_all_messages_in_order():
    stream = b"".join(encode_frame(m) for m in SAMPLES)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert got == SAMPLES
    assert decoder.buffered == 0


def test_feed_buffers_even_if_not_iterated():
    frame = encode_frame(Ping(t=1.0))
    decoder = FrameDecoder()
    decoder.feed(frame[:3])  # result deliberately ignored: the bytes must still be kept
    assert decoder.buffered == 3
    assert list(decoder.feed(frame[3:])) == [Ping(t=1.0)]


def test_oversized_frame_refused_from_header_alone():
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="limit"):
        list(decoder.feed(struct.pack(">I", 2**31)))  # only the 4-byte header, no body
    assert decoder.buffered == 0


def test_frame_at_limit_accepted_one_over_refused():
    msg = Drafts(rid=1, epoch=0, base=0, tokens=tuple(range(100)))
    size = len(encode_message(msg))
    assert list(FrameDecoder(max_frame=size).feed(encode_frame(msg, max_frame=size))) == [msg]
    with pytest.raises(ProtocolError):
        list(FrameDecoder(max_frame=size - 1).feed(encode_frame(msg)))


def test_encode_frame_over_limit_refused():
    big = SessionStart(rid=1, prompt=tuple(range(10_000)))
    with pytest.raises(ProtocolError, match="frame limit"):
        encode_frame(big, max_frame=1000)
    assert len(encode_frame(big)) < DEFAULT_MAX_FRAME


def test_http_garbage_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # reserved msgpack byte
        msgpack.packb({"type": 1}),  # not an array
        msgpack.packb([]),  # empty
        msgpack.packb(["hello"]),  # tag not an int
        msgpack.packb([99, 1, 2]),  # unknown type
        msgpack.packb([6, 1.0, 2, 3]),  # Ping with too many fields
        msgpack.packb([3, 1]),  # Drafts missing required fields
        msgpack.packb([3, 1, 0, 0, 5]),  # Drafts.tokens not a list
        msgpack.packb([6, 1.0]) + b"\x00",  # trailing bytes
    ],
)
def test_garbage_bodies_are_protocol_errors(body):
    with pytest.raises(ProtocolError):
        decode_message(body)
    frame = struct.pack(">I", len(body)) + body
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(frame))


def test_valid_messages_before_garbage_are_delivered():
    body = msgpack.packb([99])
    stream = encode_frame(Ping(t=1.0)) + struct.pack(">I", len(body)) + body
    it = FrameDecoder().feed(stream)
    assert next(it) == Ping(t=1.0)
    with pytest.raises(ProtocolError, match="unknown message type"):
        next(it)


def test_encode_refuses_non_messages():
    with pytest.raises(TypeError):
        encode_message("not a message")  # type: ignore[arg-type]


def test_check_hello():
    mine = Hello(version=PROTOCOL_VERSION, role="controller", model="target", tokenizer="tok-A")
    check_hello(mine, Hello(version=PROTOCOL_VERSION, role="worker", tokenizer="tok-A"))
    with pytest.raises(ProtocolError, match="worker sent no tokenizer fingerprint"):
        check_hello(mine, Hello(version=PROTOCOL_VERSION, role="worker"))  # would skip the check
    with pytest.raises(ProtocolError, match="this worker has no tokenizer fingerprint"):
        check_hello(Hello(version=PROTOCOL_VERSION, role="worker"), mine)
    with pytest.raises(ProtocolError, match="version mismatch"):
        check_hello(mine, Hello(version=PROTOCOL_VERSION + 1, role="worker", tokenizer="tok-A"))
    with pytest.raises(ProtocolError, match="tokenizer mismatch") as info:
        check_hello(mine, Hello(version=PROTOCOL_VERSION, role="worker", model="draft",
                                tokenizer="tok-B"))
    assert "tok-A" in str(info.value) and "tok-B" in str(info.value)


def test_the_protocol_version_counts_the_pong_load_and_authentication():
    assert PROTOCOL_VERSION == 3


def test_a_pong_without_load_fields_decodes_as_an_idle_worker():
    assert decode_message(msgpack.packb([7, 1.5, 3])) == Pong(1.5, 3, 0.0, 0.0)


def test_pong_load_numbers_may_be_ints_and_come_out_floats():
    msg = decode_message(msgpack.packb([7, 1.5, 3, 1, 4]))
    assert msg == Pong(1.5, 3, 1.0, 4.0)
    assert type(msg.busy) is float and type(msg.demand) is float


@pytest.mark.parametrize("busy, demand", [
    (-0.01, 0.0), (1.01, 0.0), (float("nan"), 0.0), (float("inf"), 0.0),  # busy out of [0, 1]
    ("0.5", 0.0), (None, 0.0), (True, 0.0), ([0.5], 0.0), ({"busy": 1}, 0.0),  # not a number
    (0.5, -1.0), (0.5, 1e7), (0.5, float("nan")), (0.5, float("-inf")), (0.5, 2**63),
    (0.5, "3"), (0.5, False), (0.5, b"\x01"),
], ids=repr)
def test_pong_load_out_of_range_or_of_the_wrong_type_is_a_protocol_error(busy, demand):
    body = msgpack.packb([7, 1.5, 3, busy, demand], use_bin_type=True)
    with pytest.raises(ProtocolError, match="Pong"):
        decode_message(body)
    with pytest.raises(ProtocolError):  # through the framing too: the connection is dropped
        list(FrameDecoder().feed(struct.pack(">I", len(body)) + body))


def test_pong_load_at_the_edges_is_accepted():
    assert decode_message(encode_message(Pong(0.0, 0, 1.0, 1e6))) == Pong(0.0, 0, 1.0, 1e6)
    assert decode_message(encode_message(Pong(0.0, 0, 0.0, 0.0))) == Pong(0.0, 0)
