"""The worker batches drafting across sessions: one draft pass for every session of every
connection that needs a next token, oldest first, lookaheads capped by capacity, load reported.

Controllers are played by hand over in-process links (their messages are exactly what a
``RemoteEngine`` sends), so each test controls when a session starts, commits, cancels or drops;
the worker's device runs emulated costs on a virtual clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from remote_support import TIMING, virtual
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)
from wanspec.runtime.worker import BusyMeter, WorkerService
from wanspec.timing.device import PassCost
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.inproc import LinkParams, inproc_pair

PASS_S = 0.010  # every emulated draft pass costs 10 ms, whatever it carries
COST = PassCost(PASS_S * 1000)
PROMPTS = [(5, 17, 33), (120, 7, 7, 250, 33, 0, 91, 12), (9,), (44, 45, 46, 47, 48), (201, 3),
           (77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87)]
SAMPLINGS = {"greedy": {}, "sampled": {"temperature": 0.8, "top_p": 0.9, "seed": 11}}


@pytest.fixture(scope="module")
def worker_lm(near_draft):
    lm = near_draft.sibling("batching-worker")
    yield lm
    lm.close()


class Controller:
    """One controller connection to ``service``, played by hand; it records what comes back."""

    def __init__(self, service: WorkerService, *, auto_commit: bool = False) -> None:
        self.service = service
        self.conn, worker_end = inproc_pair(LinkParams())
        self.handler = asyncio.create_task(service.handle(worker_end))
        self.auto_commit = auto_commit  # commit every draft as it arrives: sessions never idle
        self.drafts: dict[int, list[Drafts]] = defaultdict(list)
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.stats: dict[int, SessionStats] = {}
        self.errors: list[Error] = []
        self.pongs: list[Pong] = []
        self._reader: asyncio.Task | None = None

    async def open(self) -> "Controller":
        await self.conn.send(Hello(PROTOCOL_VERSION, "controller", "test",
                                   self.service.fingerprint, self.service.draft.vocab_size))
        assert isinstance(await self.conn.recv(), Hello)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await self.conn.recv()
                if isinstance(msg, Drafts):
                    self.drafts[msg.rid].append(msg)
                    self.arrivals[msg.rid].append(loop.time())
                    if self.auto_commit:
                        await self.conn.send(Commit(msg.rid, msg.epoch, msg.base, msg.tokens))
                elif isinstance(msg, SessionStats):
                    self.stats[msg.rid] = msg
                elif isinstance(msg, Error):
                    self.errors.append(msg)
                elif isinstance(msg, Pong):
                    self.pongs.append(msg)
        except ConnectionClosed:
            pass

    async def send(self, msg) -> None:
        await self.conn.send(msg)

    def tokens(self, rid: int, epoch: int | None = None) -> list[int]:
        return [t for d in self.drafts[rid] if epoch is None or d.epoch == epoch for t in d.tokens]

    async def ping(self, t: float) -> Pong:
        n = len(self.pongs)
        await self.send(Ping(t, n + 1))
        await until(lambda: len(self.pongs) > n)
        return self.pongs[-1]

    async def close(self) -> None:
        await self.conn.close()
        await asyncio.wait_for(self.handler, 5)  # raises if the worker's handler raised
        if self._reader is not None:
            self._reader.cancel()


async def until(cond, timeout: float = 30.0) -> None:
    """Wait (virtual time) until ``cond()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


# ---- drafting through shared passes gives the tokens of drafting alone -------------------------


async def script(c: Controller, rid: int, prompt, lookahead: int, sampling: dict) -> list:
    """A session's fixed story: draft to the lookahead; a commit that agrees with the first draft
    and then diverges (rollback: a new epoch, a catch-up feed of two tokens); then a commit of
    the new chain's head (the chain is kept and refilled)."""
    await c.send(SessionStart(rid, prompt, lookahead=lookahead, **sampling))
    await until(lambda: len(c.tokens(rid)) == lookahead)
    d = c.tokens(rid)
    base = len(prompt)
    vocab = c.service.draft.vocab_size
    await c.send(Commit(rid, 0, base, (d[0], (d[1] + 1) % vocab, 7)))
    await until(lambda: len(c.tokens(rid, epoch=1)) == lookahead)
    e = c.tokens(rid, epoch=1)
    await c.send(Commit(rid, 1, base + 3, tuple(e[:2])))
    await until(lambda: len(c.tokens(rid, epoch=1)) == lookahead + 2)
    return [(m.epoch, m.base, m.tokens) for m in c.drafts[rid]]


def alone(worker_lm, prompt, lookahead: int, sampling: dict) -> list:
    """The same story with the worker to itself (every pass carries this one session)."""
    async def main():
        service = WorkerService(worker_lm, cost=COST)
        c = await Controller(service).open()
        out = await script(c, 1, prompt, lookahead, sampling)
        await c.close()
        assert service.device.stats.sequences == service.device.stats.passes
        return out

    return virtual(main)


@pytest.mark.parametrize("sampling", SAMPLINGS.values(), ids=SAMPLINGS.keys())
def test_sessions_of_two_connections_share_passes_and_draft_as_alone(worker_lm, sampling):
    lookahead = 5
    want = [alone(worker_lm, p, lookahead, sampling) for p in PROMPTS]

    async def main():
        service = WorkerService(worker_lm, cost=COST, max_batch=8)
        a, b = await Controller(service).open(), await Controller(service).open()
        stories = [script(a if i % 2 == 0 else b, i + 1, p, lookahead, sampling)
                   for i, p in enumerate(PROMPTS)]
        got = await asyncio.gather(*stories)
        await a.close()
        await b.close()
        await until(lambda: worker_lm.pool.in_use == 0, timeout=PASS_S)  # every KV slot back
        return got, service

    got, service = virtual(main)
    assert got == want
    st = service.device.stats
    per_session = sum(len(w) for w in want)  # one pass per draft streamed (no pass was wasted)
    assert st.sequences == per_session
    assert st.sequences / st.passes > 3  # six sessions, two controllers: passes were shared
    assert service.accelerator.stats.passes == st.passes


# ---- sessions that leave mid-batch ------------------------------------------------------------


def greedy_run(worker_lm, prompt, n: int) -> list[int]:
    """The draft's own continuation of ``prompt`` (every draft committed), drafted alone."""
    async def main():
        service = WorkerService(worker_lm, cost=COST)
        c = await Controller(service, auto_commit=True).open()
        await c.send(SessionStart(1, prompt, lookahead=2))
        await until(lambda: len(c.tokens(1)) >= n)
        await c.close()
        return c.tokens(1)[:n]

    return virtual(main)


def test_a_cancelled_session_and_a_dropped_connection_free_their_slots_and_spare_the_rest(
        worker_lm):
    n = 16
    want = {rid: greedy_run(worker_lm, PROMPTS[rid - 1], n) for rid in (1, 3)}  # the survivors

    async def main():
        service = WorkerService(worker_lm, cost=COST, max_batch=8)
        a = await Controller(service, auto_commit=True).open()
        b = await Controller(service, auto_commit=True).open()
        for rid, p in enumerate(PROMPTS, 1):
            await (a if rid <= 3 else b).send(SessionStart(rid, p, lookahead=2))
        await until(lambda: service.device.stats.passes >= 6)
        await asyncio.sleep(PASS_S / 2)  # in the middle of a shared pass
        assert worker_lm.pool.in_use == 6
        await a.send(Cancel(2))  # a session leaves while its next pass waits or runs
        b.conn.kill()  # and a whole controller disappears
        await until(lambda: 2 in a.stats and b.handler.done())
        await asyncio.wait_for(b.handler, 5)  # the worker's side of it ended without raising
        # the slots come back at once, or at the end of the pass still writing into them
        await until(lambda: worker_lm.pool.in_use == 2, timeout=PASS_S)
        drafts_at_drop = {rid: len(a.tokens(rid)) for rid in (1, 3)}
        await until(lambda: all(len(a.tokens(rid)) >= n for rid in (1, 3)))
        batched_later = service.accelerator.stats.mean_batch
        for rid in (1, 3):
            await a.send(Cancel(rid))
        await until(lambda: 1 in a.stats and 3 in a.stats)
        await a.close()
        await until(lambda: worker_lm.pool.in_use == 0, timeout=PASS_S)
        return a, drafts_at_drop, batched_later, service

    a, drafts_at_drop, batched_later, service = virtual(main)
    for rid in (1, 3):
        assert a.tokens(rid)[:n] == want[rid]  # undisturbed: the tokens of drafting alone
        assert len(a.tokens(rid)) >= drafts_at_drop[rid] + 8  # and they went on drafting
    assert a.errors == [] and a.stats[2].rid == 2
    assert batched_later > 1.5
    assert worker_lm.pool.in_use == 0 and service.accelerator.batcher.waiting == 0
    assert not service.active and service.load.sessions == 0


def test_a_pass_whose_cache_was_closed_is_dropped_quietly(worker_lm):
    async def main():
        service = WorkerService(worker_lm, cost=COST)
        c = await Controller(service, auto_commit=True).open()
        await c.send(SessionStart(1, PROMPTS[0], lookahead=2))
        await c.send(SessionStart(2, PROMPTS[1], lookahead=2))
        await until(lambda: len(c.tokens(1)) >= 3)
        (conn,) = service._open
        conn.caches[1, 0].close()  # behind the core's back: its next pass is skipped, not failed
        n2 = len(c.tokens(2))
        await until(lambda: len(c.tokens(2)) >= n2 + 10)
        stalled = len(c.tokens(1))
        await asyncio.sleep(0.2)
        await c.close()
        return c, stalled

    c, stalled = virtual(main)
    assert c.errors == [] and len(c.tokens(1)) == stalled  # session 1 silent, no error, no crash


def test_a_failed_pass_ends_its_session_with_an_error_and_spares_the_others(worker_lm):
    async def main():
        service = WorkerService(worker_lm, cost=COST)
        real_enqueue = service.accelerator.enqueue

        def flaky(kind, cache, run, sampling, source=None, owner=None):
            if len(run.tokens) == len(PROMPTS[3]):  # session 2's prefill
                failed = asyncio.get_running_loop().create_future()
                failed.set_exception(ValueError("device fell over"))
                return failed
            return real_enqueue(kind, cache, run, sampling, source, owner)

        service.accelerator.enqueue = flaky  # type: ignore[method-assign]
        c = await Controller(service, auto_commit=True).open()
        await c.send(SessionStart(1, PROMPTS[0], lookahead=2))
        await c.send(SessionStart(2, PROMPTS[3], lookahead=2))
        await until(lambda: len(c.errors) == 1 and len(c.tokens(1)) >= 10)
        await until(lambda: worker_lm.pool.in_use == 1, timeout=PASS_S)  # session 2's slot is back
        await c.close()
        await until(lambda: worker_lm.pool.in_use == 0, timeout=PASS_S)
        return c

    c = virtual(main)
    (error,) = c.errors
    assert error.rid == 2 and error.code == "session" and "draft pass failed" in error.message
    assert c.tokens(2) == []


# ---- over capacity: fair shares, shorter lookaheads, the load reported -------------------------


def test_over_capacity_every_session_gets_its_share_and_the_load_is_reported(worker_lm):
    """Six always-hungry sessions, two per pass: a strict rotation, none starved."""
    run_s = 0.3

    async def main():
        service = WorkerService(worker_lm, cost=COST, max_batch=2)
        a = await Controller(service, auto_commit=True).open()
        b = await Controller(service, auto_commit=True).open()
        for rid, p in enumerate(PROMPTS, 1):
            await (a if rid % 2 else b).send(SessionStart(rid, p, lookahead=9))
        passes0 = service.device.stats.passes
        await asyncio.sleep(run_s)
        pong = await a.ping(1.0)
        passes = service.device.stats.passes - passes0
        counts = {rid: len((a if rid % 2 else b).drafts[rid]) for rid in range(1, 7)}
        gaps = [t2 - t1 for c in (a, b) for ts in c.arrivals.values() for t1, t2 in zip(ts, ts[1:])]
        for rid in range(1, 7):
            await (a if rid % 2 else b).send(Cancel(rid))
        await asyncio.sleep(5.0)  # an idle worker ...
        idle = await b.ping(2.0)
        await a.close()
        await b.close()
        return counts, gaps, passes, pong, idle, service

    counts, gaps, passes, pong, idle, service = virtual(main)
    st = service.device.stats
    assert st.sequences == 2 * st.passes  # every pass full
    share = 2 * passes / 6
    assert all(abs(k - share) <= 2 for k in counts.values()), counts  # equal shares
    assert max(gaps) <= 3 * PASS_S + 1e-9  # each session in every third pass: never starved
    assert pong.demand == pytest.approx(3.0)  # six sessions, two per pass
    assert pong.busy > 0.9  # the device never rested
    assert idle.demand == 0.0 and idle.busy < 0.01  # ... reports it


def test_lookahead_caps_shrink_over_capacity_and_recover(worker_lm):
    async def main():
        service = WorkerService(worker_lm, cost=COST, max_batch=2)
        a = await Controller(service).open()
        b = await Controller(service).open()
        for rid, p in enumerate(PROMPTS, 1):
            await (a if rid <= 3 else b).send(SessionStart(rid, p, lookahead=9))
        await asyncio.sleep(0.5)  # everyone drafts to its cap, then waits
        capped = {rid: len((a if rid <= 3 else b).tokens(rid)) for rid in range(1, 7)}
        for rid in (2, 3):
            await a.send(Cancel(rid))
        b.conn.kill()  # down to one session: within capacity again
        await asyncio.sleep(0.5)
        recovered = len(a.tokens(1))
        await a.close()
        return capped, recovered

    capped, recovered = virtual(main)
    assert capped == {rid: 3 for rid in range(1, 7)}  # 9 * 2 // 6: the near heads only
    assert recovered == 9  # the survivor's cap is its own lookahead again


def test_busy_meter_reads_the_last_window():
    m = BusyMeter(window_s=2.0)
    assert m.fraction(0.0, 0.0) == 0.0
    assert m.fraction(1.0, 0.5) == pytest.approx(0.5)  # less history than a window: all of it
    assert m.fraction(2.0, 1.5) == pytest.approx(0.75)
    assert m.fraction(3.0, 1.5) == pytest.approx(0.5)  # [1, 3]
    assert m.fraction(10.0, 1.5) == 0.0  # a long silence: idle, however busy it was before
    assert m.fraction(10.5, 2.5) == pytest.approx(0.5)  # [8.5, 10.5]
    assert m.fraction(11.0, 9.0) == 1.0  # a long pass counted at its end: clamped


# ---- end to end: two controllers' requests on one worker --------------------------------------


def test_two_controllers_requests_share_the_worker_and_stay_lossless(target, worker_lm):
    """Real controllers (``RemoteEngine``, two requests at once each) on one worker: the worker's
    passes carry sessions of both; every output is the target's own."""
    from remote_support import config
    from wanspec.runtime.controller import RemoteEngine, WorkerLink
    from wanspec.runtime.engine import LocalEngine

    prompts = ["To be, or not to be", "whether 'tis nobler in the mind",
               "the slings and arrows of", "or to take arms against"]
    local = LocalEngine(target, timing=TIMING)
    want = [local.generate(p, mode="target", max_tokens=16, ignore_eos=True).token_ids
            for p in prompts]

    async def main():
        service = WorkerService(worker_lm, cost=TIMING.draft, max_batch=8)

        async def connect():
            ours, theirs = inproc_pair(LinkParams(rtt_ms=30))
            asyncio.create_task(service.handle(theirs))
            return ours

        links = [WorkerLink(connect, RemoteEngine.hello_for(target), ping_interval=0.1)
                 for _ in range(2)]
        engines = [RemoteEngine(target, link, timing=TIMING, config=config("remote"))
                   for link in links]
        results = await asyncio.gather(*(engines[i % 2].agenerate(p, max_tokens=16,
                                                                  ignore_eos=True)
                                         for i, p in enumerate(prompts)))
        loads = [link.core.worker_load for link in links]
        for link in links:
            await link.close()
        await until(lambda: worker_lm.pool.in_use == 0, timeout=1.0)
        return results, loads, service

    results, loads, service = virtual(main)
    assert [r.token_ids for r in results] == want
    assert all(r.metrics["worker_used"] for r in results)
    assert service.connections == 2 and service.totals.sessions == 4
    st = service.device.stats
    assert st.sequences / st.passes > 1.5  # the two controllers' sessions shared passes
    assert all(load is not None and 0.0 < load.busy <= 1.0 for load in loads)


@pytest.mark.parametrize("fit", [True, False])
def test_the_worker_grows_branch_lanes_only_while_its_measured_passes_stay_cheap(worker_lm, fit):
    """A device where every sequence costs what the first does (a CPU at its worst): with
    fitted trees (the default) the worker learns it from its own passes (of earlier sessions, here) and keeps a
    session's tree within two sequences a pass (twice the main line's cost); without, the tree
    (--no-fit-trees) takes what the session's budget and its draft's runner-ups allow."""
    cpu = PassCost(1.0, per_sequence_ms=1.0)  # n sequences: n ms

    async def main():
        service = WorkerService(worker_lm, cost=cpu, fit_trees=fit)
        c = await Controller(service).open()
        most = []
        for rid, prompt in enumerate(PROMPTS[:4], 1):
            await c.send(SessionStart(rid, prompt, lookahead=12, branches=16))
            most.append(0)
            for _ in range(100):  # the session drafts 12 tokens ahead on every lane, then waits
                await asyncio.sleep(0.001)
                most[-1] = max(most[-1], service.load.branches)
            await c.send(Cancel(rid))
            await until(lambda: service.load.branches == 0)
        await c.close()
        return most, service

    most, service = virtual(main)
    assert max(most) >= 3  # the draft's runner-ups are worth a few branch lanes
    if fit:
        assert len(service.load.passes.samples) >= 16
        assert most[-1] == 1  # the main line and one branch lane
    else:
        assert service.load.passes is None and most[-1] >= 3
