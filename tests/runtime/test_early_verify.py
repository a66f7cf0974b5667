"""A draft round's promised verification started as the round ends (``RunDraft.then_verify``,
``Batcher.verify_at_once``): the request gets exactly the pass it asks for, the virtual clock's
figures do not move, a broken promise or a request leaving costs time and never a token."""

from __future__ import annotations

import asyncio

import pytest

from remote_support import MAX_TOKENS, PROMPT, TIMING, config, real, reference, virtual
from wanspec.core.actions import RunDraft, RunTarget, Site, TargetDone, ThenVerify
from wanspec.core.batcher import Batcher, BatchLimits, PassKind
from wanspec.runtime.busy import SharedAccelerator, _EarlyVerify, _Job
from wanspec.runtime.engine import LocalEngine
from wanspec.runtime.inproc import InprocDeployment
from wanspec.runtime.placed import PlacedModel
from wanspec.sampling import SamplingParams
from wanspec.timing.device import Device, PassCost
from wanspec.transport.inproc import LinkParams

TOKENS = (17, 101, 5, 250, 9, 77, 33, 120)
COST = PassCost(30.0, 0.5)


def deployed(target, near_draft, policy: str, on=virtual):
    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=30),
                                    timing=TIMING, config=config(policy)) as dep:
            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            return r, dep.engine.accelerator.stats

    return on(main)


@pytest.mark.parametrize("policy", ["always", "entropy"])
def test_every_round_of_a_lone_request_is_verified_at_once_and_nothing_moves(
        target, near_draft, ref_greedy, policy, monkeypatch):
    r, stats = deployed(target, near_draft, policy)
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["local_windows"] >= 2
    assert stats.early == r.metrics["local_windows"] and stats.early_unclaimed == 0
    # the same run with the verifications asked for as usual: on the virtual clock the loop's
    # turns take no time, so every figure is the same to the last bit
    monkeypatch.setattr(Batcher, "verify_at_once", lambda self, *a: False)
    before, plain = deployed(target, near_draft, policy)
    assert plain.early == 0
    assert before.token_ids == r.token_ids
    assert before.metrics == r.metrics and before.token_gaps == r.token_gaps
    assert _virtual_figures(before.devices) == _virtual_figures(r.devices)


def _virtual_figures(devices: dict) -> dict:
    """Each device's report without what the host measured (its compute and loop CPU)."""
    return {name: {k: v for k, v in report.items() if "compute" not in k and "cpu" not in k}
            for name, report in devices.items()}


def test_on_real_time_too(target, near_draft, ref_greedy):
    r, stats = deployed(target, near_draft, "always", on=real)
    assert r.token_ids == ref_greedy.token_ids
    assert stats.early == r.metrics["local_windows"] >= 1 and stats.early_unclaimed == 0


@pytest.mark.parametrize("n, limits, early", [
    (1, BatchLimits(), "all"),
    (2, BatchLimits(), "all"),  # started together, they draft in lockstep: a pass carries both
    (2, BatchLimits(max_tokens=8), "fewer"),  # two windows of 5 do not fit one pass: split
    # (the last windows, cut short by the token budget, do)
])
def test_standard_sd_gets_it_alone_and_in_lockstep_within_the_limits(
        target, near_draft, monkeypatch, n, limits, early):
    """The baseline every policy is measured against: its rounds fill their windows.  Every
    figure is the same with the verifications started early or asked for."""
    engine = LocalEngine(target, near_draft, TIMING)
    ref = reference(target)

    async def main():
        acc = engine.accelerator(limits)
        out = await asyncio.gather(*(engine.agenerate(PROMPT, mode="sd", max_tokens=MAX_TOKENS,
                                                      ignore_eos=True, accelerator=acc)
                                     for _ in range(n)))
        return out, acc.stats

    out, stats = virtual(main)
    assert all(o.token_ids == ref.token_ids for o in out)
    rounds = sum(o.metrics["verify_rounds"] for o in out)
    assert stats.early == rounds if early == "all" else 0 < stats.early < rounds
    assert stats.early_unclaimed == 0
    monkeypatch.setattr(Batcher, "verify_at_once", lambda self, *a: False)
    asked, _ = virtual(main)
    for a, o in zip(asked, out):
        assert a.metrics == o.metrics and a.token_gaps == o.token_gaps
        assert _virtual_figures(a.devices) == _virtual_figures(o.devices)


def _acc(target, near_draft):
    device = Device("busy")
    return SharedAccelerator(PlacedModel(target, device, COST, "target"),
                             PlacedModel(near_draft, device, PassCost(4.0, 0.0), "draft"))


async def _round_then(acc, target, near_draft, then_verify, ask, *, leave=False, late=0.0):
    """A lone request: a prefill, a round of 3 drafts promising ``then_verify``, then the
    verification ``ask(done)``, ``late`` seconds after the round (or it leaves as the round
    ends)."""
    t_cache, d_cache = target.new_cache(), near_draft.new_cache()
    try:
        async with acc.admitted():
            await acc.enqueue(PassKind.TARGET, t_cache, RunTarget(1, 0, TOKENS, 1),
                              SamplingParams())
            done = await acc.enqueue(
                PassKind.DRAFT, d_cache, RunDraft(2, Site.CONTROLLER, 0, TOKENS, 3, then_verify),
                SamplingParams(), then_cache=t_cache)
            if leave:
                t_cache.close()
                return done, None
            await asyncio.sleep(late)
            return done, await acc.enqueue(PassKind.TARGET, t_cache, ask(done), SamplingParams())
    finally:
        t_cache.close()
        d_cache.close()


def _promise() -> ThenVerify:
    return ThenVerify(len(TOKENS) - 1, (TOKENS[-1],))


def test_the_promised_pass_is_the_one_the_request_gets(target, near_draft):
    async def main(promise):
        acc = _acc(target, near_draft)
        done, got = await _round_then(acc, target, near_draft, promise,
                                      lambda d: _promise().action(7, d))
        return done, got, acc.stats, acc.device.stats

    done, early, stats, device = virtual(lambda: main(_promise()))
    _, asked, plain, device_plain = virtual(lambda: main(None))
    assert (stats.early, stats.early_unclaimed, plain.early) == (1, 0, 0)
    assert isinstance(early, TargetDone) and early.op == 7 and len(early.choices) == 4
    assert early == asked  # the same pass, run before it was asked for
    assert device.passes == device_plain.passes == 1 + 3 + 1  # prefill, the round, one verify
    assert device.busy_s == pytest.approx(device_plain.busy_s)


def test_a_broken_promise_costs_a_pass_and_not_a_token(target, near_draft):
    def other(done):  # the round's first draft only: not what the round promised
        return RunTarget(7, len(TOKENS) - 1, (TOKENS[-1], done.token), 2)

    async def main(promise):
        acc = _acc(target, near_draft)
        _, got = await _round_then(acc, target, near_draft, promise, other)
        return got, acc.stats, acc.device.stats

    got, stats, device = virtual(lambda: main(_promise()))
    want, _, device_plain = virtual(lambda: main(None))
    assert got == want and got.op == 7
    assert (stats.early, stats.early_unclaimed) == (1, 1)
    assert device.passes == device_plain.passes + 1  # the wasted verification


def test_a_request_that_leaves_as_its_round_ends_leaves_nothing_waiting(target, near_draft):
    async def main():
        acc = _acc(target, near_draft)
        await _round_then(acc, target, near_draft, _promise(), None, leave=True)
        # the accelerator goes on serving: a new request is verified as usual
        done, got = await _round_then(acc, target, near_draft, _promise(),
                                      lambda d: _promise().action(7, d))
        return got, acc.stats

    got, stats = virtual(main)
    assert isinstance(got, TargetDone) and len(got.choices) == 4
    assert (stats.early, stats.early_unclaimed) == (2, 1)


def test_not_while_another_request_is_live(target, near_draft):
    """Another request (here: waiting for its worker) may join the verification pass: the
    round's verification is queued as usual, so that pass still carries everyone ready."""
    async def main():
        acc = _acc(target, near_draft)
        other = asyncio.Event()

        async def idle_request():
            async with acc.admitted():
                await other.wait()

        task = asyncio.create_task(idle_request())
        await asyncio.sleep(0)
        _, got = await _round_then(acc, target, near_draft, _promise(),
                                   lambda d: _promise().action(7, d))
        other.set()
        await task
        return got, acc.stats

    got, stats = virtual(main)
    assert isinstance(got, TargetDone) and stats.early == 0


def test_a_failing_early_pass_fails_the_request_that_asks_for_it(target, near_draft,
                                                                 monkeypatch):
    async def main():
        acc = _acc(target, near_draft)
        placed = acc.models[PassKind.TARGET]
        run_targets = placed.run_targets
        calls = []

        async def second_fails(items):
            calls.append(len(items))
            if len(calls) == 2:
                raise RuntimeError("device lost")
            return await run_targets(items)

        monkeypatch.setattr(placed, "run_targets", second_fails)
        with pytest.raises(RuntimeError, match="device lost"):
            await _round_then(acc, target, near_draft, _promise(),
                              lambda d: _promise().action(7, d))
        return acc.stats

    stats = virtual(main)
    assert (stats.early, stats.early_unclaimed) == (1, 0)


def test_asked_for_long_after_it_ended_the_pass_runs_again(target, near_draft):
    """(On the virtual clock the accelerator waits two quiet turns of the loop after a pass
    before it drops an unclaimed one; a request that asks later gets a pass of its own.)"""
    async def main():
        acc = _acc(target, near_draft)
        done, got = await _round_then(acc, target, near_draft, _promise(),
                                      lambda d: _promise().action(7, d), late=0.1)
        return got, acc.stats, acc.device.stats

    got, stats, device = virtual(main)
    want = virtual(lambda: _round_then(_acc(target, near_draft), target, near_draft, None,
                                       lambda d: _promise().action(7, d)))[1]
    assert got == want
    assert (stats.early, stats.early_unclaimed, device.passes) == (1, 1, 1 + 3 + 2)


def test_a_claim_is_told_how_long_the_pass_ran_before_it_asked():
    """The core times its verification from when it asked; the pass began earlier."""
    async def main():
        loop = asyncio.get_running_loop()
        action = RunTarget(-1, 4, (1, 2), 2)
        cache, sampling = object(), SamplingParams()
        early = _EarlyVerify([_Job(PassKind.TARGET, cache, action, sampling,
                                   loop.create_future())])
        early.started = loop.time() - 0.25
        assert early.claim(cache, RunTarget(9, 4, (1, 2), 2), SamplingParams(seed=1)) is None
        fut = early.claim(cache, RunTarget(9, 4, (1, 2), 2), sampling)
        early.finish([TargetDone(-1, (5, 6))])
        return await fut

    got = real(main)
    assert got.op == 9 and got.choices == (5, 6) and got.head_start >= 0.25
