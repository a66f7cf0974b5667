"""A request that drops its worker (for drafts no honest worker sends) cancels its session there.

The link stays up for the other requests, so without a Cancel the worker's session would hold a
KV slot and a place under its session limit until the connection closed.  Harness: the fake
worker of tests/runtime/hostile_worker_harness.py, over TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio

from hostile_worker_harness import (  # noqa: F401  (pair: the harness's fixture)
    FakeWorker,
    drafts_frame,
    handshake,
    pair,
    run_case,
)
from wanspec.protocol.messages import Cancel


def test_a_dropped_worker_gets_the_sessions_cancel(pair):  # noqa: F811
    heard: list = []

    async def lie_then_listen(w: FakeWorker) -> None:
        await handshake(w)
        start = await w.session()
        n = len(start.prompt)
        await w.send_raw(drafts_frame(start.rid, 0, n, [w.oracle(n), w.vocab]))  # out of vocab
        while (msg := await w.recv()) is not None:
            heard.append(msg)

    result, _ = asyncio.run(run_case(pair, lie_then_listen, "greedy"))
    assert result.token_ids == pair.refs["greedy"]
    assert "vocabulary" in result.metrics["worker_lost"]
    rid = next(m.rid for m in heard if hasattr(m, "prompt"))
    assert Cancel(rid, "dropped") in heard, heard
