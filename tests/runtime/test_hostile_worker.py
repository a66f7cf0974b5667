"""The controller against a hostile worker: whatever the worker sends, the output is the target's.

A fake worker (tests/runtime/hostile_worker_harness.py: a real TCP socket on 127.0.0.1, the
protocol spoken by hand) misbehaves in one way per case: wrong, out-of-vocabulary, wrongly
typed, stale, shifted, enormous or endless drafts, floods of stats, pongs, pings and errors,
stalls before and after the handshake, closes and resets mid-stream, garbage, lying draft
trees.  Each case runs greedy and with seeded sampling, and checks that the output equals
target-only decoding within a hard wall-clock deadline.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack
import pytest

from hostile_worker_harness import (  # noqa: F401  (pair: the harness's fixture)
    MAX_TOKENS,
    SAMPLINGS,
    Behaviour,
    FakeWorker,
    announce_branches,
    check_case,
    drafts_frame,
    forever,
    handshake,
    pair,
    raw_frame,
)
from wanspec.protocol.codec import PROTOCOL_VERSION, encode_frame
from wanspec.protocol.messages import Commit, Drafts, Error, Hello, Ping, Pong, SessionStats


# ---- behaviours ---------------------------------------------------------------------------------
# Each takes the fake worker right after the controller connected; when it returns the fake
# worker keeps the connection open and silent (unless the behaviour closed it).


async def honest_oracle(w: FakeWorker) -> None:
    """The control case: a worker that drafts the target's own tokens (so the harness works)."""
    await handshake(w)
    await w.chain(w.oracle)


async def wrong_drafts(w: FakeWorker) -> None:
    """Protocol-correct, but every draft is wrong (in the vocabulary)."""
    await handshake(w)
    await w.chain(w.wrong)


async def random_drafts(w: FakeWorker) -> None:
    await handshake(w)
    await w.chain(lambda p: w.rng.randrange(w.vocab))


async def wrong_same_epoch(w: FakeWorker) -> None:
    """Wrong drafts, and after a rollback the chain goes on under the old epoch."""
    await handshake(w)
    await w.chain(w.wrong, epoch_step=0)


async def stale_epoch_oracle(w: FakeWorker) -> None:
    """The first chain (epoch 7) is wrong; later chains are right but claim older epochs."""
    await handshake(w)
    first = True

    def token(p: int) -> int:
        return w.wrong(p) if first else w.oracle(p)

    def epoch(rollbacks: int) -> int:
        nonlocal first
        first = False
        return max(0, 6 - rollbacks)

    await w.chain(token, first_epoch=7, epoch_after_rollback=epoch)


async def shifted_plus(w: FakeWorker) -> None:
    """The target's tokens, each claimed one position later."""
    await handshake(w)
    await w.chain(w.oracle, shift=1)


async def shifted_minus(w: FakeWorker) -> None:
    """The target's next tokens, claimed one position earlier (overlapping the commits)."""
    await handshake(w)
    await w.chain(lambda p: w.oracle(p + 1), shift=-1)


async def oracle_one_ahead(w: FakeWorker) -> None:
    """Correct bases, but each draft is the token of the next position (a shifted drafter)."""
    await handshake(w)
    await w.chain(lambda p: w.oracle(p + 1))


async def out_of_vocab(w: FakeWorker) -> None:
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    for token in (w.vocab, -1, 2**63 - 1, 2**64 - 1):
        await w.send_raw(drafts_frame(start.rid, 0, n, [w.oracle(n), token]))


async def typed_tokens(w: FakeWorker) -> None:
    """Drafts whose tokens are strings, floats, booleans, None, lists, maps."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    for bad in ("7", 7.0, True, None, [7], {"t": 7}, b"\x07"):
        await w.send_raw(drafts_frame(start.rid, 0, n, [bad]))


async def typed_fields(w: FakeWorker) -> None:
    """Drafts whose rid, epoch or base have the wrong type (some unhashable)."""
    await handshake(w)
    start = await w.session()
    n, rid, tok = len(start.prompt), start.rid, [w.oracle(len(start.prompt))]
    fields: list[tuple[Any, Any, Any]] = [
        (rid, "0", n), (rid, 0, float(n)), (rid, 0.0, n), (rid, None, n), (rid, -1, n),
        (rid, 0, -5), (float(rid), 0, n), (str(rid), 0, n), (True, 0, n), ([rid], 0, n),
        ({"r": rid}, 0, n)]
    for r, epoch, base in fields:
        await w.send_raw(drafts_frame(r, epoch, base, tok))
    await w.chain(w.oracle)


async def typed_statistics(w: FakeWorker) -> None:
    """Entropy / top-probability lists of the wrong length, type or value."""
    await handshake(w)
    start = await w.session()
    n, rid = len(start.prompt), start.rid
    tok = [w.oracle(n)]
    for entropy, top in (([1.0, 2.0], []), ([], [0.5, 0.5]), (["x"], []), ([float("nan")], []),
                         ([float("inf")], []), ([-1.0], []), ([], [None]), ([[1.0]], [])):
        await w.send_raw(drafts_frame(rid, 0, n, tok, entropy, top))


async def typed_other_messages(w: FakeWorker) -> None:
    """Errors, stats and pongs with fields of the wrong type (rids that do not hash or compare)."""
    await handshake(w)
    start = await w.session()
    for obj in ([8, "boom", None], [8, "boom", [start.rid]], [8, "boom", "1"],
                [8, "boom", start.rid, 5, "not a map"], [9, [start.rid], 1, 2, 3, 4],
                [9, start.rid, "a", None, [], {}], [7, "t", 1], [7, None, None, 0.5, 0.5]):
        await w.send_raw(raw_frame(obj))
    await w.chain(w.oracle)


async def wrong_arity(w: FakeWorker) -> None:
    """A Drafts with no fields, then one with too many."""
    await handshake(w)
    start = await w.session()
    await w.send_raw(raw_frame([3]))
    await w.send_raw(raw_frame([3, start.rid, 0, len(start.prompt), [1], [], [], "extra"]))


async def enormous_drafts(w: FakeWorker) -> None:
    """One Drafts of 150,000 valid tokens (a ~450 kB frame, under the frame limit)."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    tokens = [w.oracle(n + i) if i < 4 else w.rng.randrange(w.vocab) for i in range(150_000)]
    await w.send_raw(drafts_frame(start.rid, 0, n, tokens))


async def enormous_statistics(w: FakeWorker) -> None:
    """A short chain with 100,000 entropies (a ~900 kB frame)."""
    await handshake(w)
    start = await w.session()
    await w.send_raw(drafts_frame(start.rid, 0, len(start.prompt), [w.oracle(len(start.prompt))],
                                  [0.5] * 100_000))


async def oversize_frame(w: FakeWorker) -> None:
    """A frame header announcing 2 GiB (the controller must not allocate it)."""
    await handshake(w)
    await w.session()
    await w.send_raw(struct.pack(">I", 2**31) + b"\x93\x03\x01")


async def length_lie_short(w: FakeWorker) -> None:
    """A header announcing 1,000 bytes followed by 10, then silence with the socket open."""
    await handshake(w)
    await w.session()
    await w.send_raw(struct.pack(">I", 1000) + bytes(10))


async def drafts_past_the_end(w: FakeWorker) -> None:
    """Drafts for positions past the session's max_position (and far past the lookahead)."""
    await handshake(w)
    start = await w.session()
    await w.send(Drafts(start.rid, 0, start.max_position, (1, 2, 3)))
    await w.send(Drafts(start.rid, 0, 2**40, (1,)))


async def endless_drafts(w: FakeWorker) -> None:
    """A new chain of random drafts at the committed end, as fast as the socket takes them."""
    await handshake(w)
    start = await w.session()
    epoch = 0
    while not w.writer.is_closing():
        epoch += 1
        await w.send(Drafts(start.rid, epoch, len(w.committed),
                            tuple(w.rng.randrange(w.vocab) for _ in range(3))))
        await asyncio.sleep(0)


async def endless_stale(w: FakeWorker) -> None:
    """One live chain, then an endless stream of stale-epoch drafts."""
    await handshake(w)
    start = await w.session()
    await w.send(Drafts(start.rid, 5, len(start.prompt), (w.oracle(len(start.prompt)),)))
    while not w.writer.is_closing():
        await w.send(Drafts(start.rid, w.rng.randrange(5), len(w.committed), (1, 2)))
        await asyncio.sleep(0)


async def stats_flood(w: FakeWorker) -> None:
    """SessionStats for this request and random ones, pongs and pings, without end; then
    oracle drafts would be welcome, but the flood goes on in parallel."""
    await handshake(w)
    start = await w.session()

    async def flood() -> None:
        i = 0
        while not w.writer.is_closing():
            i += 1
            await w.send(SessionStats(start.rid if i % 2 else w.rng.randrange(1 << 30),
                                      i, i, i, i))
            await w.send(Pong(float(i), i, 1.0, 1e6))
            await w.send(Ping(float(i), i))
            await w.send(Error("noise", rid=w.rng.randrange(1 << 20) + 1000, code="session"))
            await asyncio.sleep(0)

    task = asyncio.create_task(flood())
    try:
        await w.chain(w.oracle)
    finally:
        task.cancel()


async def pong_lies(w: FakeWorker) -> None:
    """Pongs that claim an enormous RTT and load, answered to every ping, with oracle drafts."""
    await handshake(w)

    async def answer() -> None:
        while (msg := await w.recv()) is not None:
            if isinstance(msg, Ping):
                await w.send(Pong(-1e300, msg.seq, 1.0, 1e6))

    task = asyncio.create_task(answer())
    await w.send(Pong(-1e300, 0, 1.0, 1e6))  # unasked, too
    try:
        await w.chain(w.oracle)
    finally:
        task.cancel()


async def stall_before_hello(w: FakeWorker) -> None:
    await forever()


async def partial_hello(w: FakeWorker) -> None:
    """Half of an honest Hello frame, then silence."""
    await w.recv()
    frame = encode_frame(w.hello)
    await w.send_raw(frame[: len(frame) // 2])


async def stall_after_hello(w: FakeWorker) -> None:
    await handshake(w)


async def stall_after_drafts(w: FakeWorker) -> None:
    """Two right drafts, then silence with the socket open."""
    await handshake(w)
    await w.chain(w.oracle, send_limit=1)


async def close_before_hello(w: FakeWorker) -> None:
    await w.recv()
    w.writer.close()


async def close_mid_stream(w: FakeWorker) -> None:
    """A few right drafts, then a clean close."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send(Drafts(start.rid, 0, n, tuple(w.oracle(n + i) for i in range(3))))
    await asyncio.sleep(0.01)
    w.writer.close()


async def reset_mid_stream(w: FakeWorker) -> None:
    """A few right drafts and half a frame, then a TCP reset (RST, not FIN)."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send(Drafts(start.rid, 0, n, tuple(w.oracle(n + i) for i in range(3))))
    frame = encode_frame(Drafts(start.rid, 0, n + 3, (w.oracle(n + 3),)))
    await w.send_raw(frame[:5])
    sock = w.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.writer.transport.abort()


async def garbage_before_hello(w: FakeWorker) -> None:
    await w.recv()
    await w.send_raw(bytes(w.rng.randrange(256) for _ in range(4096)))


async def garbage_after_hello(w: FakeWorker) -> None:
    await handshake(w)
    await w.session()
    await w.send_raw(b"\x00\x00\x00\x08" + bytes(w.rng.randrange(256) for _ in range(4096)))


async def raw_msgpack(w: FakeWorker) -> None:
    """Well-formed msgpack that is no wanspec message: a map, a string, an unknown tag, an
    extension type, deep nesting."""
    await handshake(w)
    await w.session()
    kind = w.rng.randrange(5)
    objs = [{"type": 3}, "Drafts", [99, 1, 2], msgpack.ExtType(5, b"x"), [3] + [[[[[[1]]]]]] * 6]
    await w.send_raw(raw_frame(objs[kind]))


async def controller_only_message(w: FakeWorker) -> None:
    """The worker sends a Commit (only controllers do)."""
    await handshake(w)
    start = await w.session()
    await w.send(Commit(start.rid, 0, len(start.prompt), (1,)))
    await w.chain(w.oracle)


async def fatal_error(w: FakeWorker) -> None:
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send(Drafts(start.rid, 0, n, (w.oracle(n),)))
    await w.send(Error("I give up", rid=-1))


async def session_error_then_drafts(w: FakeWorker) -> None:
    """Refuses the session, then drafts for it anyway (right ones)."""
    await handshake(w)
    start = await w.session()
    await w.send(Error("no", rid=start.rid, code="session"))
    await w.chain(w.oracle)


async def second_hello(w: FakeWorker) -> None:
    """A second Hello mid-stream (another tokenizer, another version), then right drafts."""
    await handshake(w)
    await w.session()
    await w.send(Hello(PROTOCOL_VERSION + 1, "worker", tokenizer="feedfacefeedface"))
    await w.chain(w.oracle)


async def other_rid(w: FakeWorker) -> None:
    """Right drafts, addressed to a request that does not exist."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    for rid in (start.rid + 1000, 0, -7):
        await w.send(Drafts(rid, 0, n, (w.oracle(n),)))


async def wrong_hello(w: FakeWorker) -> None:
    """A Hello with the right version but wrongly typed fields."""
    await w.recv()
    await w.send_raw(raw_frame([1, PROTOCOL_VERSION, ["worker"], 5, {"t": 1}, "x", None]))
    await w.chain(w.oracle)


async def drafts_instead_of_hello(w: FakeWorker) -> None:
    await w.recv()
    await w.send(Drafts(1, 0, 0, (1,)))


# ---- draft trees: a worker that announces "branches" (the controller then asks for them) -------


async def tree_oracle(w: FakeWorker) -> None:
    """A main line wrong at its third token, and a branch there holding the target's tokens:
    a well-formed tree whose branch the controller takes (the control case for trees)."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    span = range(n, min(n + start.lookahead, start.max_position or 1 << 30))
    main = [w.wrong(p) if p == n + 2 else w.oracle(p) for p in span]
    await w.send(Drafts(start.rid, 0, n, tuple(main)))
    await w.send(Drafts(start.rid, 0, n + 2, tuple(w.oracle(p) for p in span[2:]), lane=1,
                        parent=0, fork=n + 2))


async def branches_unasked(w: FakeWorker) -> None:
    """Branch lanes to a controller that asked for none (no "branches" in our Hello)."""
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send(Drafts(start.rid, 0, n, (w.oracle(n), w.oracle(n + 1))))
    await w.send(Drafts(start.rid, 0, n, (w.wrong(n), 5), lane=1, parent=0, fork=n))


async def branch_lies(w: FakeWorker) -> None:
    """A branch that starts with its parent's own token (no branch at all)."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send(Drafts(start.rid, 0, n, (w.wrong(n), w.wrong(n + 1))))
    await w.send(Drafts(start.rid, 0, n, (w.wrong(n), 5), lane=1, parent=0, fork=n))


async def endless_branches(w: FakeWorker) -> None:
    """Valid-looking branches, each a new lane, as fast as the socket takes them (2,000 of them:
    far past any allowance; an unbounded flood only measures this host's speed at dropping
    frames for a request that already went on without the worker)."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    # (a right main line, so the fork at its end is not committed before the flood arrives)
    await w.send(Drafts(start.rid, 0, n, tuple(w.oracle(p) for p in range(n, n + 4))))
    for lane in range(1, 2001):
        if w.eof or w.writer.is_closing():
            return
        await w.send(Drafts(start.rid, 0, n + 3, (w.wrong(n + 3), w.rng.randrange(w.vocab)),
                            lane=lane, parent=0, fork=n + 3))


BEHAVIOURS: dict[str, Behaviour] = {f.__name__.replace("_", "-"): f for f in (
    honest_oracle, wrong_drafts, random_drafts, wrong_same_epoch, stale_epoch_oracle,
    shifted_plus, shifted_minus, oracle_one_ahead, out_of_vocab, typed_tokens, typed_fields,
    typed_statistics, typed_other_messages, wrong_arity, enormous_drafts, enormous_statistics,
    oversize_frame, length_lie_short, drafts_past_the_end, endless_drafts, endless_stale,
    stats_flood, pong_lies, stall_before_hello, partial_hello, stall_after_hello,
    stall_after_drafts, close_before_hello, close_mid_stream, reset_mid_stream,
    garbage_before_hello, garbage_after_hello, raw_msgpack, controller_only_message, fatal_error,
    session_error_then_drafts, second_hello, other_rid, wrong_hello, drafts_instead_of_hello,
    tree_oracle, branches_unasked, branch_lies, endless_branches,
)}


# what each case must show besides the output (a substring of why the worker was dropped)
DROPPED_FOR = {
    "out-of-vocab": "vocabulary", "typed-tokens": "Drafts.tokens must be an integer",
    "typed-statistics": "inconsistent lengths", "enormous-drafts": "past the",
    "enormous-statistics": "inconsistent lengths", "drafts-past-the-end": "past the",
    "oversize-frame": "over the", "fatal-error": "I give up",
    "session-error-then-drafts": "refused the request",
    "controller-only-message": "unexpected Commit",
    "stall-before-hello": "handshake in time", "partial-hello": "handshake in time",
    "drafts-instead-of-hello": "did not answer with Hello", "garbage-after-hello": "protocol error",
    "close-before-hello": "closed", "wrong-arity": "protocol error",
    "branches-unasked": "without branches", "branch-lies": "its parent's own token",
    "endless-branches": "repeats a branch",
}


@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_hostile_worker_cannot_change_the_output(name, sampling_name, pair):
    result, why = check_case(pair, BEHAVIOURS[name], sampling_name, DROPPED_FOR.get(name),
                             tree_followed=name == "tree-oracle")
    if name == "honest-oracle":
        # the harness reaches the controller: an oracle's drafts are verified and accepted
        assert result.metrics["worker_used"] and not why
        # (with a local draft at hand the adaptive policy verifies fewer of them)
        least = MAX_TOKENS // 2 if sampling_name == "greedy" else 1
        assert result.metrics["remote_drafts_accepted"] >= least
