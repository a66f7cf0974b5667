"""Draft-tree lanes at the runtime: forked draft passes (a lane's cache starting from its parent's
prefix), the worker adapter's several caches per session, and the "branches" capability.

The worker's core is replaced by a stub here: these tests pin what the adapter does with the
``DraftFor`` actions a tree-growing core emits (``cache``, ``copy_from``) and with ``Release``,
whatever that core decides.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest

from remote_support import virtual
from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.batcher import PassKind
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import DraftFor, Release
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Hello
from wanspec.runtime import controller as controller_mod
from wanspec.runtime.busy import SharedAccelerator
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import TimingConfig
from wanspec.runtime.inproc import InprocDeployment
from wanspec.runtime.placed import PlacedModel
from wanspec.runtime.worker import WorkerService, _Connection
from wanspec.sampling import MAX_ALTERNATIVES, SamplingParams, draft_choice
from wanspec.timing.device import Device, PassCost
from wanspec.transport.inproc import LinkParams, inproc_pair

PREFIX = (17, 101, 5, 250, 9, 77, 33, 120, 64, 2)
SAMPLINGS = [SamplingParams(), SamplingParams(temperature=0.8, top_p=0.9, seed=11)]
COST = PassCost(10.0, 1.0)


@pytest.fixture(scope="module")
def lane_lm(near_draft):
    lm = near_draft.sibling("lanes")
    yield lm
    lm.close()


def run(op: int, start: int, tokens) -> RunDraft:
    return RunDraft(op, Site.WORKER, start, tuple(tokens))


def reference(lm, prefix, fork_at, branch, sampling, op):
    """What a lane forking ``prefix`` at ``fork_at`` must propose: a cache fed the prefix itself,
    cut back and fed the branch (the same pass shapes, so the same bits)."""
    cache = lm.new_cache()
    lm.forward(cache, 0, prefix)
    logits = lm.forward(cache, fork_at, branch)
    cache.close()
    c = draft_choice(logits[-1], fork_at + len(branch), sampling)
    return DraftDone(op, c.token, c.entropy, c.top_prob, c.alternatives, c.alt_probs)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_a_forked_draft_pass_proposes_as_a_lane_fed_its_prefix_and_costs_the_same(lane_lm,
                                                                                  sampling):
    async def main():
        device = Device("worker")
        placed = PlacedModel(lane_lm, device, COST, "draft")
        parent, lane = lane_lm.new_cache(), lane_lm.new_cache()
        first = await placed.run_draft(parent, run(1, 0, PREFIX), sampling)
        busy = device.stats.busy_s
        forked = await placed.run_draft(lane, run(2, 6, (44, 45)), sampling, source=parent)
        fork_cost = device.stats.busy_s - busy
        busy = device.stats.busy_s
        plain = await placed.run_draft(parent, run(3, 6, (44, 45)), sampling)
        plain_cost = device.stats.busy_s - busy
        parent.close()
        lane.close()
        return first, forked, plain, fork_cost, plain_cost

    first, forked, plain, fork_cost, plain_cost = virtual(main)
    assert forked == reference(lane_lm, PREFIX, 6, (44, 45), sampling, 2)
    assert plain == reference(lane_lm, PREFIX, 6, (44, 45), sampling, 3)  # the parent did it too
    # the copy costs nothing: the same pass without a fork costs the same
    assert math.isclose(fork_cost, plain_cost, rel_tol=1e-9)
    assert math.isclose(fork_cost, COST.seconds(2, context=8), rel_tol=1e-9)
    for done in (first, forked):
        assert len(done.alternatives) == MAX_ALTERNATIVES == len(done.alt_probs)
        assert done.token not in done.alternatives
        assert all(0.0 <= p <= 1.0 for p in done.alt_probs)


def test_forked_passes_batch_with_their_sources_on_the_shared_accelerator(lane_lm):
    """Lanes of one session in one pass: the main line goes on while two branches fork off it
    (reading it as it was before the pass); one pass, every proposal as if alone."""
    sampling = SamplingParams()

    async def main():
        device = Device("worker")
        acc = SharedAccelerator(None, PlacedModel(lane_lm, device, COST, "draft"))
        drafter = acc.model(PassKind.DRAFT)
        main_line, a, b = lane_lm.new_cache(), lane_lm.new_cache(), lane_lm.new_cache()
        await drafter.run_draft(main_line, run(1, 0, PREFIX), sampling)
        passes = acc.stats.passes
        got = await asyncio.gather(
            drafter.run_draft(main_line, run(2, 10, (3,)), sampling),
            drafter.run_draft(a, run(3, 4, (88,)), sampling, source=main_line),
            drafter.run_draft(b, run(4, 9, (7, 8)), sampling, source=main_line))
        one_pass = acc.stats.passes - passes == 1
        for c in (main_line, a, b):
            c.close()
        return got, one_pass

    (on, a, b), one_pass = virtual(main)
    assert one_pass
    assert a.token == reference(lane_lm, PREFIX, 4, (88,), sampling, 3).token
    assert b.token == reference(lane_lm, PREFIX, 9, (7, 8), sampling, 4).token
    assert on.token == reference(lane_lm, PREFIX, 10, (3,), sampling, 2).token


def test_only_draft_passes_fork(lane_lm):
    async def main():
        acc = SharedAccelerator(None, PlacedModel(lane_lm, Device("w"), COST, "draft"))
        cache = lane_lm.new_cache()
        with pytest.raises(ValueError, match="draft"):
            acc.enqueue(PassKind.TARGET, cache, run(1, 0, (1,)), SamplingParams(), cache)
        cache.close()

    virtual(main)


# ---- the worker adapter: a session's several caches -------------------------------------------


class StubCore:
    """Records what the adapter hands the core; decides nothing."""

    def __init__(self) -> None:
        self.done: list[tuple[int, DraftDone]] = []
        self.failed: list[tuple[int, int, str]] = []
        self.sessions: dict[int, object] = {}

    def on_pass_done(self, results: list[tuple[int, DraftDone]]) -> list:
        self.done.extend(results)
        return []

    def on_draft_failed(self, rid: int, op: int, reason: str) -> list:
        self.failed.append((rid, op, reason))
        return []

    def on_load_changed(self) -> list:
        return []


async def connection(service: WorkerService) -> tuple[_Connection, StubCore]:
    _, worker_end = inproc_pair(LinkParams())
    conn = _Connection(service, worker_end)
    core = conn.core = StubCore()  # type: ignore[assignment]
    return conn, core


async def settle(conn: _Connection) -> None:
    """Until every pass queued has run and its result reached the core."""
    while conn.waiting or conn.ended or conn.tasks:
        await asyncio.sleep(0.001)


def test_a_session_drafts_several_lanes_each_on_its_own_cache(lane_lm):
    sampling = SamplingParams()

    async def main():
        service = WorkerService(lane_lm, cost=COST)
        conn, core = await connection(service)
        conn.apply(DraftFor(1, run(1, 0, PREFIX), sampling))  # cache 0: the main line
        conn.apply(DraftFor(2, run(2, 0, PREFIX[:4]), sampling))  # another session's
        await settle(conn)
        # the main line goes on, lane 1 forks off it at 7, lane 2 at 3: three passes wait at once
        conn.apply(DraftFor(1, run(3, 10, (5,)), sampling))
        conn.apply(DraftFor(1, run(4, 7, (11, 12)), sampling, cache=1, copy_from=0))
        conn.apply(DraftFor(1, run(5, 3, (13,)), sampling, cache=2, copy_from=0))
        waiting = set(conn.waiting)
        caches = set(conn.caches)
        await settle(conn)
        left = set(conn.waiting)
        # a lane forks off another lane (the first branch), into a cache the core reuses
        conn.apply(DraftFor(1, run(6, 8, (14,)), sampling, cache=2, copy_from=1))
        await settle(conn)
        in_use = lane_lm.pool.in_use
        conn.apply(Release(1))
        after = set(conn.caches), lane_lm.pool.in_use
        conn.apply(Release(2))
        return core.done, waiting, caches, left, in_use, after, lane_lm.pool.in_use

    done, waiting, caches, left, in_use, after, end = virtual(main)
    assert waiting == {(1, 0), (1, 1), (1, 2)}
    assert caches == {(1, 0), (1, 1), (1, 2), (2, 0)}
    assert left == set()
    by_op = {ev.op: ev for _, ev in done}
    assert [rid for rid, _ in done].count(1) == 5
    # batched passes: the choices are the references', the signals equal to rounding
    for op, want in [(3, reference(lane_lm, PREFIX, 10, (5,), sampling, 3)),
                     (4, reference(lane_lm, PREFIX, 7, (11, 12), sampling, 4)),
                     (5, reference(lane_lm, PREFIX, 3, (13,), sampling, 5)),
                     (6, reference(lane_lm, PREFIX[:7] + (11, 12), 8, (14,), sampling, 6))]:
        got = by_op[op]
        assert (got.token, got.alternatives) == (want.token, want.alternatives)
        assert got.entropy == pytest.approx(want.entropy, abs=1e-5)
        assert got.alt_probs == pytest.approx(want.alt_probs, abs=1e-5)
    assert in_use == 4
    assert after == ({(2, 0)}, 1)  # the session's every cache went back, the other's stayed
    assert end == 0


def test_release_cancels_every_waiting_pass_of_the_session(lane_lm):
    sampling = SamplingParams()

    async def main():
        service = WorkerService(lane_lm, cost=PassCost(1000.0))  # a second per pass
        conn, core = await connection(service)
        conn.apply(DraftFor(1, run(1, 0, PREFIX), sampling))
        await settle(conn)
        conn.apply(DraftFor(9, run(9, 0, (1, 2)), sampling))  # occupies the device
        await asyncio.sleep(0.01)
        tasks = []  # (the passes' futures)
        for cache in range(3):
            conn.apply(DraftFor(1, run(2 + cache, 5, (cache + 1,)), sampling, cache=cache,
                                copy_from=0 if cache else None))
            tasks.append(conn.waiting[1, cache])
        conn.apply(Release(1))
        await asyncio.gather(*tasks, return_exceptions=True)
        await settle(conn)
        cancelled = all(t.cancelled() for t in tasks)
        conn.apply(Release(9))
        return core.done, core.failed, cancelled, conn.waiting, conn.caches, lane_lm.pool.in_use

    done, failed, cancelled, waiting, caches, in_use = virtual(main)
    assert cancelled and not failed
    assert [ev.op for _, ev in done] == [1, 9]  # none of the released session's passes reported
    assert waiting == {} and caches == {} and in_use == 0


def test_a_lane_copying_a_cache_the_session_lacks_is_a_core_bug(lane_lm):
    async def main():
        service = WorkerService(lane_lm, cost=COST)
        conn, _ = await connection(service)
        with pytest.raises(RuntimeError, match="copies cache 3"):
            conn.apply(DraftFor(1, run(1, 2, (5,)), SamplingParams(), cache=1, copy_from=3))
        assert conn.caches == {} and conn.waiting == {}

    virtual(main)


def test_a_core_failing_on_a_pass_closes_the_connection(lane_lm):
    """A bug of ours in the core must not leave the connection's sessions waiting for drafts
    that never come: the connection closes and its controllers decode locally."""
    class FailingCore(StubCore):
        def on_pass_done(self, results):
            raise RuntimeError("a bug")

    async def main():
        service = WorkerService(lane_lm, cost=COST)
        _, worker_end = inproc_pair(LinkParams())
        conn = _Connection(service, worker_end)
        conn.core = FailingCore()  # type: ignore[assignment]
        conn.apply(DraftFor(1, run(1, 0, PREFIX), SamplingParams()))
        await settle(conn)
        await asyncio.sleep(0.01)
        closed = conn.closing, worker_end.closed
        conn.apply(Release(1))
        return closed

    assert virtual(main) == (True, True)


# ---- the "branches" capability ------------------------------------------------------------------


def test_both_sites_announce_branches(target, lane_lm):
    assert "branches" in WorkerService(lane_lm).hello().capabilities
    assert "branches" in RemoteEngine.hello_for(target).capabilities


def worker_hello(lm, capabilities) -> Hello:
    return Hello(PROTOCOL_VERSION, "worker", "w", "0" * 16, lm.vocab_size,
                 capabilities=capabilities)


def test_a_request_asks_branches_only_of_a_worker_that_announces_them(target, lane_lm):
    async def never():
        raise AssertionError("not connected in this test")

    links = [WorkerLink(never, RemoteEngine.hello_for(target), name=f"w{i}") for i in range(2)]
    links[0].core.peer = worker_hello(lane_lm, ("drafts", "entropy", "branches"))
    links[1].core.peer = worker_hello(lane_lm, ("drafts", "entropy"))
    engine = RemoteEngine(target, links, config=ControllerConfig(branches=3))
    assert engine._branches_on(0) == 3
    assert engine._branches_on(1) == 0  # an older worker: a single chain
    assert engine._branches_on(None) == 3
    assert RemoteEngine(target, links, config=ControllerConfig(branches=0))._branches_on(0) == 0


@pytest.mark.parametrize("announced", [True, False], ids=["new-worker", "old-worker"])
def test_the_request_core_learns_the_branches_of_its_worker(target, near_draft, monkeypatch,
                                                            announced):
    cores = []

    class Recording(controller_mod.ControllerCore):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            cores.append(self)

    monkeypatch.setattr(controller_mod, "ControllerCore", Recording)
    if not announced:
        hello = WorkerService.hello  # a worker of before draft trees
        monkeypatch.setattr(WorkerService, "hello", lambda self: replace(
            hello(self), capabilities=("drafts", "entropy")))

    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=20),
                                    timing=TimingConfig.emulate(30, 4),
                                    config=ControllerConfig(branches=2)) as dep:
            r = await dep.generate("To be, or not to be", max_tokens=8, ignore_eos=True)
            return r, dep.worker_device.stats

    result, worker = virtual(main)
    assert result.metrics["worker_used"]
    (core,) = cores
    assert core.branches == (2 if announced else 0)
    if not announced:  # a single chain: one sequence in each of the worker's passes
        assert worker.sequences == worker.passes > 0
