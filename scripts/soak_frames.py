"""What ``scripts/soak.py fuzz`` sends: random messages of either side, and mutations of their
frames (bit flips, truncations, lies about lengths and types, fields swapped between messages)."""

from __future__ import annotations

import random
import struct
from typing import Any, Callable

import msgpack

from wanspec.protocol.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, encode_frame
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Message,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
    bundle_drafts,
)



def frame_of(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value: what a field may be swapped for."""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 3:
        return rng.choice([0, 1, -1, 2, 511, 512, 1 << 31, -(1 << 31), 1 << 40])
    if kind == 4:
        return rng.choice([0.0, -0.0, 1.5, -1.0, 1e308, float("nan"), float("inf"),
                           float("-inf"), 5e-324])
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if kind == 7:
        return msgpack.ExtType(rng.randrange(128), bytes(rng.randrange(4)))
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 10:
        return {random_value(rng, 3) if rng.random() < 0.5 else str(i): random_value(rng, depth + 1)
                for i in range(rng.randrange(4))}
    return [rng.randrange(512) for _ in range(rng.randrange(40))]  # a token-like list


def _wire(msg: Message) -> list[Any]:
    """A message as the array its frame carries (tag first)."""
    return msgpack.unpackb(encode_frame(msg)[4:], raw=False, strict_map_key=False)


MUTATORS = ("bitflip", "truncate", "extend", "swap_field", "arity", "length_lie",
            "random_msgpack", "random_bytes", "splice", "valid")  # "valid": an honest frame


def mutate(rng: random.Random, msg: Message, other: Message) -> tuple[str, bytes]:
    """One mutated frame made from ``msg`` (``other`` is a second message, for splices)."""
    kind = rng.choice(MUTATORS[:-1])
    frame = encode_frame(msg)
    if kind == "bitflip":
        data = bytearray(frame)
        for _ in range(rng.randint(1, 8)):
            low = 0 if rng.random() < 0.05 or len(data) <= 4 else 4  # the header, now and then
            data[rng.randrange(low, len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "truncate":
        cut = rng.randrange(1, len(frame))
        if rng.random() < 0.5:  # honest header over a short body: the next frame is misread
            return kind, frame[:cut]
        body = frame[4:][: max(cut - 4, 0)]
        return kind, struct.pack(">I", len(body)) + body
    if kind == "extend":
        extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        if rng.random() < 0.5:
            return kind, frame + extra
        body = frame[4:] + extra
        return kind, struct.pack(">I", len(body)) + body
    if kind == "swap_field":
        arr = _wire(msg)
        for _ in range(rng.randint(1, 2)):
            arr[rng.randrange(len(arr))] = random_value(rng)
        return kind, frame_of(arr)
    if kind == "arity":
        arr = _wire(msg)
        if rng.random() < 0.5 and len(arr) > 1:
            del arr[rng.randrange(1, len(arr)):]
        else:
            arr += [random_value(rng) for _ in range(rng.randint(1, 3))]
        return kind, frame_of(arr)
    if kind == "length_lie":
        length = rng.choice([0, 1, len(frame) - 5, len(frame) + 3, DEFAULT_MAX_FRAME,
                             DEFAULT_MAX_FRAME + 1, (1 << 32) - 1, rng.randrange(1 << 32)])
        return kind, struct.pack(">I", max(length, 0)) + frame[4:]
    if kind == "random_msgpack":
        return kind, frame_of(random_value(rng))
    if kind == "random_bytes":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    b = encode_frame(other)  # splice
    return kind, frame[: rng.randrange(1, len(frame))] + b[rng.randrange(len(b)):]


def random_tokens(rng: random.Random, n: int, vocab: int = 512) -> tuple[int, ...]:
    return tuple(rng.randrange(vocab) for _ in range(n))


def controller_message(rng: random.Random, rid: int, position: int) -> Message:
    """A plausible controller-to-worker message (what the live worker is fuzzed with)."""
    kind = rng.randrange(6)
    if kind == 0:
        prompt = random_tokens(rng, rng.randint(1, 24))
        return SessionStart(rid, prompt, rng.choice([0.0, 0.8]), rng.choice([0, 5]),
                            rng.choice([1.0, 0.9]), rng.randrange(100), rng.randint(1, 8),
                            rng.choice([0, len(prompt) + rng.randint(1, 40)]))
    if kind in (1, 2):
        return Commit(rid, rng.randrange(3), position, random_tokens(rng, rng.randint(1, 4)))
    if kind == 3:
        return Cancel(rid, "done")
    if kind == 4:
        return Ping(rng.random() * 100, rng.randrange(1000))
    return Error("fuzz", rid=rng.choice([-1, rid]))


def _drafts(rng: random.Random, rid: int, position: int, vocab: int, epoch: int | None = None,
            **lane: int) -> Drafts:
    n = rng.randint(1, 4)
    base = position + rng.choice([0, 0, 0, 1, -1]) if not lane else position
    return Drafts(rid, rng.randrange(4) if epoch is None else epoch, max(base, 0),
                  random_tokens(rng, n, vocab), tuple(rng.random() * 3 for _ in range(n)),
                  tuple(rng.random() for _ in range(n)), **lane)


def worker_message(rng: random.Random, rid: int, position: int, vocab: int = 512) -> Message:
    """A plausible worker-to-controller message (what the controller's side is fuzzed with)."""
    kind = rng.randrange(9)
    if kind <= 3:
        return _drafts(rng, rid, position, vocab)
    if kind == 7:  # a pass's lanes in one message: the main line and branches off it
        epoch = rng.randrange(4)
        items = [_drafts(rng, rid, position, vocab, epoch)]
        for lane in range(1, rng.randint(1, 4)):
            fork = position + rng.randrange(3)
            items.append(_drafts(rng, rid, fork, vocab, epoch, lane=lane, parent=0, fork=fork))
        return bundle_drafts(items)
    if kind == 4:
        return Pong(rng.random() * 10, rng.randrange(10), rng.random(), rng.random() * 3)
    if kind == 5:
        return SessionStats(rid, rng.randrange(50), rng.randrange(50), rng.randrange(5),
                            rng.randrange(5))
    if kind == 6:
        return Ping(rng.random(), rng.randrange(10))
    return Error("fuzz", rid=rng.choice([rid, rid + 1]))


def stream(rng: random.Random, message: Callable[[], Message], limit: int,
           counts: dict[str, int], valid_share: float = 0.3) -> tuple[bytes, int, str | None]:
    """Up to ``limit`` frames, mutated or (``valid_share`` of them) valid, ending with the
    first that breaks the stream for the receiver's decoder: one it refuses, or an incomplete
    one that would swallow what follows.  Returns the bytes, how many mutated frames the
    receiver reads, and how the stream broke: "refused" (the receiver closes at once),
    "incomplete" (it waits for the rest), or None (it did not; so every frame counted is read)."""
    probe = FrameDecoder()
    frames: list[bytes] = []
    mutated = 0
    for _ in range(limit):
        if rng.random() < valid_share:
            kind, data = "valid", encode_frame(message())
        else:
            kind, data = mutate(rng, message(), message())
            mutated += 1
        counts[kind] += 1
        frames.append(data)
        try:
            for _ in probe.feed(data):
                pass
        except ProtocolError:
            return b"".join(frames), mutated, "refused"
        if probe.buffered:
            return b"".join(frames), mutated, "incomplete"
    return b"".join(frames), mutated, None
