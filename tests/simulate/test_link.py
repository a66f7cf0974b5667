"""The simulator's link is the in-process transport's latency model, number for number."""

from __future__ import annotations

import asyncio
import random

import pytest

from wanspec.protocol.codec import encode_frame
from wanspec.protocol.messages import (
    Cancel, Commit, Drafts, Error, Hello, Ping, Pong, SessionStart, SessionStats,
)
from wanspec.simulate.link import FifoLink, frame_size, link_pair
from wanspec.timing import clock
from wanspec.transport.inproc import LinkParams, _Pipe

PARAMS = [
    LinkParams(rtt_ms=40),
    LinkParams(rtt_ms=40, jitter_ms=7, seed=3),
    LinkParams(rtt_ms=10, bandwidth_bps=2e5, up_share=0.3),
    LinkParams(rtt_ms=80, jitter_ms=5, bandwidth_bps=1e6, spike_prob=0.2, spike_ms=80, seed=9),
]


@pytest.mark.parametrize("params", PARAMS)
def test_arrival_times_equal_the_inproc_pipe(params):
    rng = random.Random(1)
    plan = [(rng.choice([0.0, 0.0, 0.001, 0.013]), rng.randint(10, 3000)) for _ in range(200)]

    async def via_pipe() -> list[float]:
        pipe = _Pipe(params, params.up_ms, "up")
        loop = asyncio.get_running_loop()
        out = []
        for gap, size in plan:
            await asyncio.sleep(gap)
            out.append((loop.time(), pipe.push(b"x" * size)))
        return out

    pushed = clock.run(via_pipe, virtual=True)
    link = FifoLink(params, params.up_ms, "up")
    for (now, arrival), (_, size) in zip(pushed, plan):
        assert link.push(now, size + 4) == arrival  # bit-identical, header included
    assert link.messages == len(plan)


def test_link_pair_splits_the_rtt():
    up, down = link_pair(LinkParams(rtt_ms=100, up_share=0.25))
    assert up.push(0.0, 10) == pytest.approx(0.025)
    assert down.push(0.0, 10) == pytest.approx(0.075)


MESSAGES = [
    Drafts(1, 0, 12, (5,), (0.25,), (0.8,)),
    Drafts(300, 70000, 2**33, (31999,), (2.0,), (0.1,)),
    Drafts(3, 1, 40, (1, 2, 3), (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)),
    Drafts(3, 1, 40, (1,), (), ()),
    Commit(1, 0, 13, (5, 6, 7, 8)),
    Commit(200, 4, 100000, tuple(range(20))),
    SessionStart(1, tuple(range(100, 140)), lookahead=19, max_position=300),
    Cancel(1, "done"),
    SessionStats(1, 500, 400, 100, 30),
    Ping(1.5, 3),
    Pong(1.5, 3),
    Hello(1, "controller", "m", "0" * 16, 32000, ("drafts", "entropy")),
    Error("boom", rid=2, code="session"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_frame_size_is_the_wire_size(msg):
    assert frame_size(msg) == len(encode_frame(msg))
