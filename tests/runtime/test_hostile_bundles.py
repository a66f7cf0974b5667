"""The controller against a hostile worker's DraftsBundle messages, over a real TCP socket.

Same harness as tests/runtime/test_hostile_worker.py (tests/runtime/hostile_worker_harness.py:
a fake worker speaking the protocol by hand, the shipped pair, greedy and seeded sampling, a
hard deadline): whatever a bundle holds, the output is target-only decoding's, and a bundle no
honest worker sends drops the worker.
"""

from __future__ import annotations

import pytest

from hostile_worker_harness import (  # noqa: F401  (pair: the harness's fixture)
    SAMPLINGS,
    FakeWorker,
    announce_branches,
    check_case,
    handshake,
    pair,
    raw_frame,
)
from wanspec.protocol.messages import Drafts, bundle_drafts


def tree(w: FakeWorker, rid: int, n: int, lookahead: int, end: int) -> list[Drafts]:
    """A main line wrong at its third token and a branch there holding the target's tokens."""
    span = range(n, min(n + lookahead, end))
    main = [w.wrong(p) if p == n + 2 else w.oracle(p) for p in span]
    return [Drafts(rid, 0, n, tuple(main), (0.1,) * len(main), (0.9,) * len(main)),
            Drafts(rid, 0, n + 2, tuple(w.oracle(p) for p in span[2:]), (0.2,) * (len(span) - 2),
                   (0.5,) * (len(span) - 2), lane=1, parent=0, fork=n + 2)]


async def tree_oracle_bundled(w: FakeWorker) -> None:
    """The control case: a well-formed tree in one bundle, whose branch the controller takes."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    await w.send(bundle_drafts(tree(w, start.rid, len(start.prompt), start.lookahead,
                                    start.max_position or 1 << 30)))


async def bundle_unfit_arrays(w: FakeWorker) -> None:
    """A bundle whose counts do not add up to its tokens."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    await w.send_raw(raw_frame([11, start.rid, 0, [0, 1], [0, 0], [0, n], [n, n], [2, 5],
                                [w.oracle(n), w.oracle(n + 1), 3], [0.1] * 3, [0.9] * 3]))


async def bundle_too_many_items(w: FakeWorker) -> None:
    """One bundle holding a thousand lanes (a session has at most ``branches + 1``)."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n = len(start.prompt)
    k = 1000
    await w.send_raw(raw_frame([11, start.rid, 0, list(range(k)), [0] * k, [n] * k, [n] * k,
                                [1] * k, [w.oracle(n)] * k, [0.1] * k, [0.9] * k]))


async def bundle_typed(w: FakeWorker) -> None:
    """Bundles with wrongly typed arrays: strings, floats, negative lanes, nested lists."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    n, rid = len(start.prompt), start.rid
    for lanes, tokens in ((["0"], [1]), ([0.0], [1]), ([-1], [1]), ([[0]], [1]), ([0], ["7"])):
        await w.send_raw(raw_frame([11, rid, 0, lanes, [0], [n], [n], [1], tokens, [0.1],
                                    [0.9]]))


async def bundle_flood(w: FakeWorker) -> None:
    """Valid-looking bundles of the same tree, again and again (2,000 of them)."""
    announce_branches(w)
    await handshake(w)
    start = await w.session()
    b = bundle_drafts(tree(w, start.rid, len(start.prompt), start.lookahead,
                           start.max_position or 1 << 30))
    for _ in range(2000):
        if w.eof or w.writer.is_closing():
            return
        await w.send(b)


BEHAVIOURS = {f.__name__.replace("_", "-"): f for f in (
    tree_oracle_bundled, bundle_unfit_arrays, bundle_too_many_items, bundle_typed, bundle_flood)}
# why the worker was dropped (a substring), per case
DROPPED_FOR = {
    "bundle-unfit-arrays": "do not fit together", "bundle-too-many-items": "1000 items",
    "bundle-typed": "protocol error",
}  # (the flood is dropped for "more Drafts than an honest worker sends" unless the request
# finished first: that race is the host's; the output and the deadline are what must hold)


@pytest.mark.parametrize("sampling_name", list(SAMPLINGS))
@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_hostile_bundles_cannot_change_the_output(name, sampling_name, pair):  # noqa: F811
    check_case(pair, BEHAVIOURS[name], sampling_name, DROPPED_FOR.get(name),
               tree_followed=name == "tree-oracle-bundled")
