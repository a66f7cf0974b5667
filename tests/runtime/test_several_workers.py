"""Several workers: each request is placed on the best one, moves to another when it fails or
refuses, and decodes alone only when none is usable -- always with output identical to
target-only decoding.  In-process links on the virtual clock."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest
from remote_support import MAX_TOKENS, PROMPT, SAMPLED, TIMING, config, virtual

from wanspec.core.worker import WorkerLimits
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.timing.device import Device
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.inproc import InprocConnection, LinkParams, inproc_pair


class Site:
    """One worker site behind its own emulated link."""

    def __init__(self, name: str, draft, rtt_ms: float) -> None:
        self.name = name
        self.model = draft.sibling(f"worker-{name}")
        self.device = Device(name)
        self.service = WorkerService(self.model, cost=TIMING.draft, device=self.device)
        self.params = LinkParams(rtt_ms=rtt_ms)
        self.alive = True
        self.ends: list[InprocConnection] = []
        self.handlers: list[asyncio.Task[None]] = []

    async def connect(self):
        if not self.alive:
            raise ConnectionClosed(f"worker {self.name} is down")
        ours, theirs = inproc_pair(self.params)
        self.ends += [ours, theirs]
        self.handlers.append(asyncio.create_task(self.service.handle(theirs)))
        return ours

    def kill(self) -> None:
        self.alive = False
        for end in self.ends:
            end.kill()

    async def close(self) -> None:
        for end in self.ends:
            await end.close()
        for t in self.handlers:
            t.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        self.model.close()


def engine_for(target, sites: Sequence[Site], local_draft=None, policy: str = "entropy"):
    links = [WorkerLink(s.connect, RemoteEngine.hello_for(target),
                        rtt_prior_s=s.params.rtt_ms / 1000, name=s.name) for s in sites]
    return RemoteEngine(target, links, local_draft=local_draft, timing=TIMING,
                        config=config(policy))


async def run_with(target, draft, rtts: Sequence[float], body, local: bool = True,
                   policy: str = "entropy"):
    sites = [Site(f"w{i}", draft, rtt) for i, rtt in enumerate(rtts)]
    local_draft = draft.sibling("local-draft") if local else None
    engine = engine_for(target, sites, local_draft, policy)
    try:
        return await body(engine, sites)
    finally:
        assert engine.workers is not None
        await engine.workers.close()
        for s in sites:
            await s.close()
        if local_draft is not None:
            local_draft.close()


def test_a_request_goes_to_the_nearer_worker(target, same_draft, ref_greedy):
    async def body(engine, sites):
        first = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
        rest = await asyncio.gather(*(engine.agenerate(PROMPT, max_tokens=MAX_TOKENS,
                                                       ignore_eos=True) for _ in range(3)))
        return [first, *rest], engine.workers.describe()

    results, workers = virtual(lambda: run_with(target, same_draft, [120, 20], body))
    for r in results:
        assert r.token_ids == ref_greedy.token_ids
        assert r.metrics["worker"] == "w1"  # 20 ms beats 120 ms with drafts just as good
    assert [w["placed"] for w in workers] == [0, 4]
    assert workers[0]["up"]  # (connected too: usable if w1 fails)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_a_request_moves_when_its_worker_dies(sampled, target, near_draft, ref_greedy,
                                              ref_sampled):
    sampling = SAMPLED if sampled else None
    ref = ref_sampled if sampled else ref_greedy

    async def body(engine, sites):
        await engine.agenerate(PROMPT, max_tokens=4, ignore_eos=True)  # both workers connect
        seen: list[int] = []

        def on_tokens(tokens):
            seen.extend(tokens)
            if len(seen) >= 8 and sites[0].alive:
                sites[0].kill()

        r = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True,
                                   sampling=sampling, on_tokens=on_tokens)
        return r, seen, sites[1].device.stats.passes, engine.workers.describe()

    # policy "remote": every window comes from a worker (the local draft is only the fallback)
    r, seen, w1_passes, workers = virtual(lambda: run_with(target, near_draft, [20, 60], body,
                                                           policy="remote"))
    assert seen == r.token_ids == ref.token_ids
    assert r.metrics["worker_lost"] and r.metrics["worker_moves"] == 1
    assert r.metrics["worker"] == "w1"
    assert w1_passes > 0  # the second worker drafted for it
    assert r.metrics["remote_drafts_accepted"] > 0
    assert workers[0]["lost"] == 1 and workers[1]["placed"] == 1
    # each worker is credited with its own drafts; it finished with a worker (no fallback)
    by_worker = r.metrics["remote_drafts_by_worker"]
    assert set(by_worker) == {"w0", "w1"} and by_worker["w1"]["received"] > 0
    assert sum(d["received"] for d in by_worker.values()) == r.metrics["remote_drafts_received"]
    assert sum(d["accepted"] for d in by_worker.values()) == r.metrics["remote_drafts_accepted"]
    assert r.metrics["worker_at_end"] is True


def test_a_refused_request_moves_to_another_worker(target, same_draft, ref_greedy):
    async def body(engine, sites):
        sites[0].service.limits = WorkerLimits(max_sessions=0)  # the nearer one refuses all
        r = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
        return r, sites[1].device.stats.passes

    r, w1_passes = virtual(lambda: run_with(target, same_draft, [20, 60], body))
    assert r.token_ids == ref_greedy.token_ids
    assert "refused" in r.metrics["worker_lost"]
    assert r.metrics["worker_moves"] == 1 and r.metrics["worker"] == "w1"
    assert w1_passes > 0


def test_concurrent_requests_survive_a_worker_dying_under_them(target, near_draft, ref_greedy):
    async def body(engine, sites):
        async def killer():
            await asyncio.sleep(0.4)
            sites[1].kill()

        k = asyncio.create_task(killer())
        rs = await asyncio.gather(*(engine.agenerate(PROMPT, max_tokens=MAX_TOKENS,
                                                     ignore_eos=True) for _ in range(6)))
        await k
        return rs, engine.workers.describe()

    rs, workers = virtual(lambda: run_with(target, near_draft, [30, 30], body))
    assert all(r.token_ids == ref_greedy.token_ids for r in rs)
    assert sum(w["live"] for w in workers) == 0  # every request left its worker


@pytest.mark.parametrize("local", [True, False], ids=["local-sd", "target-only"])
def test_no_usable_worker_decodes_alone(local, target, same_draft, ref_greedy):
    async def body(engine, sites):
        for s in sites:
            s.kill()
        r = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
        return r, engine.workers.describe()

    r, workers = virtual(lambda: run_with(target, same_draft, [20, 40], body, local=local))
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["worker_used"] is False and r.metrics["worker"] is None
    assert r.metrics["worker_at_end"] is False and r.metrics["remote_drafts_by_worker"] == {}
    assert all(w["last_error"] and "down" in w["last_error"] for w in workers)
