"""The in-process link: exact latency model on virtual time, ordering, close and kill."""

from __future__ import annotations

import asyncio
import math

import pytest

from wanspec.errors import WanspecError
from wanspec.protocol.codec import ProtocolError, encode_frame
from wanspec.protocol.messages import Drafts, Hello, Ping, Pong
from wanspec.timing import clock
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.inproc import LinkParams, inproc_pair


def vrun(main, timeout: float = 600.0):
    """Run on virtual time, bounded: a stuck test hits the (virtual) timeout instantly."""
    return clock.run(lambda: asyncio.wait_for(main(), timeout), virtual=True)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def test_one_way_delay_is_half_the_rtt():
    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=100))
        await asyncio.sleep(1.234)
        t0 = loop.time()
        await ctrl.send(Ping(t=t0, seq=1))
        msg = await worker.recv()
        assert msg == Ping(t=t0, seq=1)
        assert close(loop.time(), t0 + 0.05)
        await worker.send(Pong(t=msg.t, seq=msg.seq))
        pong = await ctrl.recv()
        assert close(loop.time(), t0 + 0.1)
        assert close(loop.time() - pong.t, 0.1)  # RTT measured by Ping/Pong equals the link RTT

    vrun(main)


def test_asymmetric_up_share():
    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=100, up_share=0.8))
        t0 = loop.time()
        await ctrl.send(Ping(t=0.0))
        await worker.recv()
        assert close(loop.time(), t0 + 0.08)
        await worker.send(Pong(t=0.0))
        await ctrl.recv()
        assert close(loop.time(), t0 + 0.1)

    vrun(main)


async def _timed_burst(params: LinkParams, n: int, gap_s: float) -> list[tuple[float, float, int]]:
    """Send ``n`` Pings controller->worker ``gap_s`` apart; (send time, arrival, seq) each."""
    loop = asyncio.get_running_loop()
    ctrl, worker = inproc_pair(params)
    sent: list[float] = []

    async def sender():
        for i in range(n):
            sent.append(loop.time())
            await ctrl.send(Ping(t=loop.time(), seq=i))
            if gap_s:
                await asyncio.sleep(gap_s)

    task = asyncio.create_task(sender())
    got = []
    for _ in range(n):
        msg = await worker.recv()
        got.append((msg.t, loop.time(), msg.seq))
    await task
    assert [s for s, _, _ in got] == sent
    return got


def test_jitter_never_reorders():
    params = LinkParams(rtt_ms=40, jitter_ms=30, seed=3)
    got = vrun(lambda: _timed_burst(params, 200, 0.001))
    assert [seq for _, _, seq in got] == list(range(200))
    arrivals = [a for _, a, _ in got]
    assert arrivals == sorted(arrivals)
    delays = [a - s for s, a, _ in got]
    assert min(delays) >= 0.02 - 1e-12
    assert max(delays) > 0.03  # jitter really applied
    # waiting for a predecessor (sent earlier, same bound) never pushes past one_way + jitter
    assert all(d <= 0.02 + 0.03 + 1e-9 for d in delays)


def test_bandwidth_adds_serialisation_time_and_queues():
    msg = Drafts(rid=1, epoch=0, base=0, tokens=tuple(range(200)))
    size = len(encode_frame(msg))
    bw = 100_000.0  # bits per second

    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=20, bandwidth_bps=bw))
        t0 = loop.time()
        await ctrl.send(msg)
        await ctrl.send(msg)  # back to back: waits for the first to leave the link
        await worker.recv()
        assert close(loop.time(), t0 + size * 8 / bw + 0.01)
        await worker.recv()
        assert close(loop.time(), t0 + 2 * size * 8 / bw + 0.01)
        # after an idle period the link is free again: no stale queueing
        await asyncio.sleep(5)
        t1 = loop.time()
        await ctrl.send(msg)
        await worker.recv()
        assert close(loop.time(), t1 + size * 8 / bw + 0.01)

    vrun(main)


def test_spike_always():
    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=10, spike_prob=1.0, spike_ms=200))
        t0 = loop.time()
        await ctrl.send(Ping(t=0.0))
        await worker.recv()
        assert close(loop.time(), t0 + 0.005 + 0.2)

    vrun(main)


def test_spikes_hit_a_fraction_of_messages():
    params = LinkParams(rtt_ms=10, spike_prob=0.3, spike_ms=200, seed=5)
    got = vrun(lambda: _timed_burst(params, 200, 1.0))  # gaps longer than a spike: no queueing
    delays = [a - s for s, a, _ in got]
    spiked = [d for d in delays if d > 0.1]
    assert all(close(d, 0.005) for d in delays if d <= 0.1)
    assert all(close(d, 0.205) for d in spiked)
    assert 30 <= len(spiked) <= 90


def test_same_seed_same_timeline_other_seed_differs():
    def timeline(seed: int):
        params = LinkParams(rtt_ms=30, jitter_ms=20, spike_prob=0.1, spike_ms=100, seed=seed)
        return vrun(lambda: _timed_burst(params, 100, 0.002))

    assert timeline(1) == timeline(1)
    assert timeline(1) != timeline(2)


def test_receiver_gets_a_fresh_equal_object_and_counters_count():
    async def main():
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=2))
        msgs = [Hello(version=1, role="controller", capabilities=("a",)), Ping(t=1.0, seq=2)]
        for m in msgs:
            await ctrl.send(m)
        got = [await worker.recv() for _ in msgs]
        assert got == msgs
        assert all(g is not m for g, m in zip(got, msgs))
        nbytes = sum(len(encode_frame(m)) for m in msgs)
        assert (ctrl.sent.messages, ctrl.sent.bytes) == (2, nbytes)
        assert (worker.received.messages, worker.received.bytes) == (2, nbytes)
        assert (worker.sent.messages, ctrl.received.messages) == (0, 0)

    vrun(main)


def test_oversize_frame_refused_at_send_link_still_usable():
    async def main():
        ctrl, worker = inproc_pair(LinkParams(), max_frame=100)
        with pytest.raises(ProtocolError):
            await ctrl.send(Drafts(rid=1, epoch=0, base=0, tokens=tuple(range(1000))))
        await ctrl.send(Ping(t=1.0))
        assert await worker.recv() == Ping(t=1.0)
        assert ctrl.sent.messages == 1

    vrun(main)


def test_close_delivers_in_flight_then_ends():
    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=100))
        t0 = loop.time()
        for i in range(3):
            await ctrl.send(Ping(t=0.0, seq=i))
        await ctrl.close()
        await ctrl.close()  # idempotent
        assert ctrl.closed
        with pytest.raises(ConnectionClosed):
            await ctrl.send(Ping(t=0.0))
        with pytest.raises(ConnectionClosed):
            await ctrl.recv()
        assert not worker.closed  # the FIN is still on its way
        await worker.send(Pong(t=0.0))  # sent before the worker knows: lost, no error
        assert [(await worker.recv()).seq for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ConnectionClosed):
            await worker.recv()
        assert close(loop.time(), t0 + 0.05)  # the close travels like data
        assert worker.closed
        with pytest.raises(ConnectionClosed):
            await worker.send(Pong(t=0.0))
        with pytest.raises(ConnectionClosed):
            await worker.recv()  # stays ended

    vrun(main)


def test_kill_drops_everything_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=100))
        await ctrl.send(Ping(t=0.0, seq=1))
        await asyncio.sleep(0.06)  # delivered, but not read yet
        await ctrl.send(Ping(t=0.0, seq=2))  # in flight
        waiter = asyncio.create_task(ctrl.recv())
        await asyncio.sleep(0)
        t = loop.time()
        worker.kill()
        assert ctrl.closed and worker.closed
        with pytest.raises(ConnectionClosed, match="killed"):
            await waiter  # a pending recv on the other end wakes up
        with pytest.raises(ConnectionClosed, match="killed"):
            await worker.recv()  # the unread message is gone too
        assert loop.time() == t
        for end in (ctrl, worker):
            with pytest.raises(ConnectionClosed):
                await end.send(Ping(t=0.0))
        await asyncio.sleep(1.0)
        assert worker.received.messages == 1  # the in-flight one never arrived

    vrun(main)


def test_works_on_a_real_time_loop():
    async def main():
        ctrl, worker = inproc_pair(LinkParams(rtt_ms=2))
        await ctrl.send(Ping(t=1.0))
        assert await worker.recv() == Ping(t=1.0)
        await worker.close()
        with pytest.raises(ConnectionClosed):
            await ctrl.recv()

    asyncio.run(asyncio.wait_for(main(), 5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rtt_ms": -1}, {"jitter_ms": -0.1}, {"bandwidth_bps": -5}, {"spike_ms": -1},
        {"spike_prob": -0.1}, {"spike_prob": 1.5}, {"up_share": 1.2}, {"rtt_ms": float("nan")},
    ],
)
def test_link_params_validation(kwargs):
    with pytest.raises(WanspecError):
        LinkParams(**kwargs)


def test_link_params_one_way_split():
    p = LinkParams(rtt_ms=100, up_share=0.25)
    assert (p.up_ms, p.down_ms) == (25.0, 75.0)
