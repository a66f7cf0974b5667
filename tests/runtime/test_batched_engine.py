"""Many requests on one busy-site accelerator, their passes batched: same tokens as alone."""

from __future__ import annotations

import asyncio

import pytest

from wanspec.core.batcher import BatchLimits
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.sampling import SamplingParams
from wanspec.timing import clock

PROMPTS = [[5, 17, 33], [120, 7, 7, 250, 33, 0, 91, 12], [9], [44, 45, 46, 47, 48], [201, 3],
           [77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87], [13, 14], [60]]
LENGTHS = [12, 20, 7, 16, 3, 24, 9, 14]  # requests leave at different passes


def alone(engine, mode, prompt, n, sampling=None):
    return engine.generate(prompt, mode=mode, max_tokens=n, ignore_eos=True,
                           sampling=sampling).token_ids


async def many(engine, concurrency, mode, sampling=None, limits=None):
    """Every prompt with its own length, up to ``concurrency`` at once on one accelerator."""
    acc = engine.accelerator(limits)
    sem = asyncio.Semaphore(concurrency)

    async def one(p, n):
        async with sem:
            r = await engine.agenerate(p, mode=mode, max_tokens=n, ignore_eos=True,
                                       sampling=sampling, accelerator=acc)
            return r.token_ids

    return await asyncio.gather(*(one(p, n) for p, n in zip(PROMPTS, LENGTHS))), acc


@pytest.mark.parametrize("mode", ["target", "sd"])
@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_batched_requests_get_the_tokens_they_get_alone(target, near_draft, mode, concurrency):
    engine = LocalEngine(target, near_draft)
    want = [alone(engine, mode, p, n) for p, n in zip(PROMPTS, LENGTHS)]
    got, acc = clock.run(lambda: many(engine, concurrency, mode), virtual=False)
    assert got == want
    if concurrency > 1:
        assert acc.stats.mean_batch > 1.5  # the passes really were shared
    else:
        assert acc.stats.mean_batch == 1.0


def test_sampled_requests_too(target, near_draft):
    engine = LocalEngine(target, near_draft)
    sampling = SamplingParams(temperature=0.9, top_p=0.95, seed=3)
    want = [alone(engine, "sd", p, n, sampling) for p, n in zip(PROMPTS, LENGTHS)]
    got, _ = clock.run(lambda: many(engine, 8, "sd", sampling), virtual=False)
    assert got == want


def test_limits_bound_every_pass(target, near_draft):
    engine = LocalEngine(target, near_draft)
    want = [alone(engine, "sd", p, n) for p, n in zip(PROMPTS, LENGTHS)]
    got, acc = clock.run(lambda: many(engine, 8, "sd", limits=BatchLimits(max_sequences=3)),
                         virtual=False)
    assert got == want
    assert 1.5 < acc.stats.mean_batch <= 3


def test_on_a_virtual_clock_a_shared_pass_costs_one_pass(target, near_draft):
    """Emulated costs: 8 target-only requests in lockstep take about as long as the longest."""
    engine = LocalEngine(target, near_draft, TimingConfig.emulate(30.0, 4.0, 0.5))

    async def timed(concurrency):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out, acc = await many(engine, concurrency, "target")
        return out, loop.time() - t0, acc

    one, t_one, _ = clock.run(lambda: timed(1), virtual=True)
    eight, t_eight, acc = clock.run(lambda: timed(8), virtual=True)
    assert one == eight
    tokens = sum(LENGTHS)
    prefill_extra = sum(len(p) - 1 for p in PROMPTS) * 0.0005
    # one request after another: a pass per token
    assert t_one == pytest.approx(tokens * 0.030 + prefill_extra)
    # together: one pass per position of the longest request, each 30 ms + 0.5 ms per extra token
    assert t_eight < max(LENGTHS) * (0.030 + 0.0005 * 8) + 0.05
    assert acc.device.stats.sequences == tokens and acc.device.stats.passes == max(LENGTHS)


def test_a_request_cancelled_mid_batch_leaves_the_others_intact(target, near_draft):
    engine = LocalEngine(target, near_draft)
    want = [alone(engine, "sd", p, n) for p, n in zip(PROMPTS, LENGTHS)]

    async def run():
        acc = engine.accelerator()
        tasks = [asyncio.create_task(engine.agenerate(p, mode="sd", max_tokens=n, ignore_eos=True,
                                                      accelerator=acc))
                 for p, n in zip(PROMPTS, LENGTHS)]
        while acc.stats.passes < 6:
            await asyncio.sleep(0.001)
        tasks[5].cancel()  # the longest request leaves halfway
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return done, acc

    done, acc = clock.run(run, virtual=False)
    assert isinstance(done[5], asyncio.CancelledError)
    for i, r in enumerate(done):
        if i != 5:
            assert r.token_ids == want[i]
    assert acc.batcher.waiting == 0
    assert target.pool.in_use == 0 and near_draft.pool.in_use == 0  # every slot given back


def test_generate_many_keeps_prompt_order_and_validates(target, near_draft):
    engine = LocalEngine(target, near_draft)
    results, acc = engine.generate_many(PROMPTS[:4], concurrency=2, mode="sd", max_tokens=6,
                                        ignore_eos=True)
    assert [r.token_ids for r in results] == [alone(engine, "sd", p, 6) for p in PROMPTS[:4]]
    with pytest.raises(Exception, match="concurrency"):
        engine.generate_many(PROMPTS, concurrency=0)


def test_a_failing_rider_or_observer_does_not_stop_the_accelerator(target, near_draft):
    """Callbacks run inside the shared pump: one that raises must not strand the others."""
    engine = LocalEngine(target, near_draft)
    want = [alone(engine, "sd", p, n) for p, n in zip(PROMPTS, LENGTHS)]

    def broken(*_):
        raise ZeroDivisionError("a bug in one request")

    async def run():
        acc = engine.accelerator()
        acc.add_rider(broken)
        acc.on_pass = broken
        outs = await asyncio.wait_for(asyncio.gather(*(
            engine.agenerate(p, mode="sd", max_tokens=n, ignore_eos=True, accelerator=acc)
            for p, n in zip(PROMPTS, LENGTHS))), 60)
        return [r.token_ids for r in outs], acc

    outs, acc = clock.run(run, virtual=True)
    assert outs == want
    assert not acc._riders  # the failing rider was dropped


def test_a_pump_that_dies_fails_every_waiting_pass_instead_of_hanging(target):
    engine = LocalEngine(target)

    async def run():
        acc = engine.accelerator()
        tasks = [asyncio.create_task(engine.agenerate(p, mode="target", max_tokens=n,
                                                      ignore_eos=True, accelerator=acc))
                 for p, n in zip(PROMPTS, LENGTHS)]
        while acc.stats.passes < 2:
            await asyncio.sleep(0)
        acc._pump.cancel()  # the pump itself goes away (e.g. its loop shuts down)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    done = clock.run(run, virtual=True)
    assert all(isinstance(r, Exception) for r in done if not hasattr(r, "token_ids"))
    assert any(isinstance(r, Exception) for r in done)
