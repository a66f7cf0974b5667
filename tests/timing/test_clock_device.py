"""The timing model: virtual clock, emulated pass costs, serialisation on one device."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time

import pytest

from wanspec.errors import WanspecError
from wanspec.timing import clock
from wanspec.timing.device import Device, PassCost


@pytest.fixture
def executor():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    yield ex
    ex.shutdown(wait=True)


def test_pass_cost_formula():
    c = PassCost(30, 1)
    assert c.seconds(1) == 0.030
    assert c.seconds(5) == 34 / 1000
    assert c.seconds(0) == 0.030  # never below the base cost
    assert PassCost(4).seconds(9) == 0.004
    with pytest.raises(WanspecError):
        PassCost(-1)
    with pytest.raises(WanspecError):
        PassCost(1, -0.5)
    with pytest.raises(WanspecError):
        PassCost(1, compute_ms_per_token=-0.1)


def test_pass_cost_roofline_memory_bound_until_compute_bound():
    c = PassCost(30, 0.5, kv_ms_per_ktoken=0.02, compute_ms_per_token=0.1)
    # one request: base + window + its KV read, as alone
    assert c.seconds(5, context=1000) == pytest.approx((30 + 2 + 0.02) / 1000)
    # 32 requests of 5-token windows: windows side by side, every request's KV read
    assert c.seconds(160, longest=5, context=32_000) == pytest.approx((30 + 2 + 0.64) / 1000)
    # 2,000 tokens (a big batch of long prefills) outgrow the weight read: compute-bound
    assert c.seconds(2000, longest=100, context=2000) == pytest.approx(200 / 1000)
    # each request beyond the first adds its own small cost; one request pays none of it
    d = PassCost(30, per_sequence_ms=0.1)
    assert d.seconds(1) == 0.030
    assert d.seconds(64, longest=1, sequences=64) == pytest.approx((30 + 6.3) / 1000)


@pytest.mark.parametrize("batch,context,published_ms", [
    (1, 1100, 31), (16, 1100, 33), (32, 1100, 36), (64, 1100, 43),  # prompt 128, 2,048 out
    (1, 3000, 31), (16, 3000, 36), (32, 3000, 43), (64, 3000, 55),  # prompt 2,048, 2,048 out
])
def test_default_target_cost_is_within_10_percent_of_published_decode_latencies(
        batch, context, published_ms):
    """Llama-2-70B FP16 on 4 A100-80GB, TP 4: median per-token latency by batch size
    (InternLM/lmdeploy docs/en/benchmark/a100_fp16.md); context: mean cached tokens per request."""
    from wanspec.timing.device import DEFAULT_TARGET_COST as t
    ms = 1000 * t.seconds(batch, longest=1, context=batch * context, sequences=batch)
    assert ms == pytest.approx(published_ms, rel=0.10)


def test_virtual_loop_starts_at_zero_and_jumps_over_sleeps():
    async def main():
        assert clock.is_virtual()
        t0 = clock.now()
        await asyncio.sleep(1000.0)  # would take 17 minutes on a real clock
        t1 = clock.now()
        await clock.sleep_until(1500.0)
        await clock.sleep_until(100.0)  # in the past: returns at once
        return t0, t1, clock.now()

    t0, t1, t2 = clock.run(main, virtual=True)
    assert t0 == 0.0
    assert math.isclose(t1, 1000.0, rel_tol=1e-12)
    assert math.isclose(t2, 1500.0, rel_tol=1e-12)


def test_real_loop_is_not_virtual():
    async def main():
        return clock.is_virtual(), clock.now()

    virtual, t = clock.run(main)
    assert virtual is False and t > 0


@pytest.mark.parametrize("k, n", [(1, 1), (7, 3), (25, 1), (12, 9)])
def test_emulated_device_charges_exact_costs(executor, k, n):
    cost = PassCost(30, 1)

    async def main():
        dev = Device("gpu")
        results = []
        for i in range(k):
            results.append(await dev.run(lambda i=i: i * i, executor=executor, cost=cost,
                                         n_tokens=n, label="target"))
        return dev, results, clock.now()

    dev, results, end = clock.run(main, virtual=True)
    expected = 0.0
    for _ in range(k):
        expected += cost.seconds(n)
    assert results == [i * i for i in range(k)]
    assert dev.stats.passes == k
    assert dev.stats.by_model == {"target": k}
    assert math.isclose(dev.stats.busy_s, expected, rel_tol=1e-12)
    assert math.isclose(end, expected, rel_tol=1e-12)
    assert dev.stats.compute_s >= 0.0


def test_virtual_time_stands_still_during_real_compute(executor):
    """Off-loop compute is invisible on the virtual clock: emulated cost only."""

    def slow():
        time.sleep(0.05)
        return "done"

    async def main():
        dev = Device("gpu")
        r1 = await dev.run(slow, executor=executor, cost=PassCost(2), n_tokens=1)
        t1 = clock.now()
        r2 = await dev.run(slow, executor=executor, cost=None, n_tokens=1)  # measured
        return dev, (r1, r2), t1, clock.now()

    dev, results, t1, t2 = clock.run(main, virtual=True)
    assert results == ("done", "done")
    assert math.isclose(t1, 0.002, rel_tol=1e-12)  # not 0.05 + 0.002
    assert t2 == t1  # measured compute on the virtual clock costs no virtual time
    assert math.isclose(dev.stats.busy_s, 0.002, rel_tol=1e-12)
    assert dev.stats.compute_s >= 0.1  # the real compute is still recorded


def test_two_devices_overlap_in_virtual_time():
    exa = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    exb = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    ca, cb = PassCost(30, 1), PassCost(10)

    async def worker(dev, ex, cost, k, n):
        for _ in range(k):
            await dev.run(lambda: None, executor=ex, cost=cost, n_tokens=n)

    async def main():
        a, b = Device("a"), Device("b")
        await asyncio.gather(worker(a, exa, ca, 3, 2), worker(b, exb, cb, 5, 1))
        return a, b, clock.now()

    try:
        a, b, end = clock.run(main, virtual=True)
    finally:
        exa.shutdown()
        exb.shutdown()
    busy_a = 0.0
    for _ in range(3):
        busy_a += ca.seconds(2)
    busy_b = 0.0
    for _ in range(5):
        busy_b += cb.seconds(1)
    assert math.isclose(a.stats.busy_s, busy_a, rel_tol=1e-12)  # 0.093
    assert math.isclose(b.stats.busy_s, busy_b, rel_tol=1e-12)  # 0.050
    assert math.isclose(end, max(busy_a, busy_b), rel_tol=1e-12)  # overlap, not the sum


def test_one_device_serialises_concurrent_passes():
    ex1 = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    ex2 = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    spans: list[tuple[str, float, float]] = []

    async def worker(dev, ex, cost, k, label):
        for _ in range(k):
            t0 = clock.now()
            await dev.run(lambda: None, executor=ex, cost=cost, n_tokens=1, label=label)
            spans.append((label, t0, clock.now()))

    async def main():
        dev = Device("busy-site")
        await asyncio.gather(worker(dev, ex1, PassCost(30), 3, "target"),
                             worker(dev, ex2, PassCost(4), 4, "draft"))
        return dev, clock.now()

    try:
        dev, end = clock.run(main, virtual=True)
    finally:
        ex1.shutdown()
        ex2.shutdown()
    expected = 0.0
    for c in [0.030] * 3 + [0.004] * 4:
        expected += c
    assert math.isclose(end, expected, rel_tol=1e-12)  # the sum: 0.106
    assert math.isclose(dev.stats.busy_s, expected, rel_tol=1e-12)
    assert dev.stats.passes == 7 and dev.stats.by_model == {"target": 3, "draft": 4}
    # no two passes' device occupancy overlaps: sorted by end time, each pass ends at least its
    # own cost after the previous one ended
    ends = sorted((e, lbl) for lbl, _, e in spans)
    prev = 0.0
    for e, lbl in ends:
        cost = 0.030 if lbl == "target" else 0.004
        assert e - prev >= cost - 1e-12
        prev = e


def test_measured_mode_records_real_compute(executor):
    def work():
        time.sleep(0.02)
        return 5

    async def main():
        dev = Device("gpu")
        r = [await dev.run(work, executor=executor, cost=None, n_tokens=3, label="m")
             for _ in range(2)]
        return dev, r

    dev, r = clock.run(main)  # real time
    assert r == [5, 5]
    assert dev.stats.passes == 2 and dev.stats.by_model == {"m": 2}
    # lower bounds only: the passes really took at least their sleep
    assert dev.stats.compute_s >= 0.04
    assert dev.stats.busy_s >= 0.04


def test_off_loop_work_runs_on_a_real_loop_too(executor):
    async def main():
        return await clock.off_loop(executor, lambda: 7)

    assert clock.run(main) == 7


def _spin(seconds: float) -> None:
    """Host work: Python on the loop's own thread."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_charging_the_host_puts_the_loops_own_work_on_the_virtual_clock():
    async def main():
        _spin(0.03)  # callbacks' Python: charged when asked
        await asyncio.sleep(1.0)  # timers still jump, exactly
        return clock.now(), asyncio.get_running_loop()

    t_free, _ = clock.run(main, virtual=True)
    t_charged, loop = clock.run(main, virtual=True, charge_host=True)
    assert t_free == 1.0
    assert t_charged >= 1.03 and loop.host_s >= 0.03
    assert t_charged - 1.0 == pytest.approx(loop.host_s, abs=0.005)


def test_charging_the_host_makes_an_emulated_cost_a_floor(executor):
    """A pass slower on this machine than its emulated cost takes its real time, as the cost
    of a real site is a floor (--target-ms); one faster still takes its cost."""

    def slow():
        time.sleep(0.05)

    async def main():
        dev = Device("gpu")
        t0 = clock.now()
        await dev.run(slow, executor=executor, cost=PassCost(2), n_tokens=1)
        t1 = clock.now()
        await dev.run(lambda: None, executor=executor, cost=PassCost(20), n_tokens=1)
        return t1 - t0, clock.now() - t1

    slow_pass, fast_pass = clock.run(main, virtual=True, charge_host=True)
    assert slow_pass >= 0.05
    assert 0.02 <= fast_pass < 0.02 + 1.0  # its cost, plus whatever host work was charged
    assert clock.run(main, virtual=True)[0] == pytest.approx(0.002)  # uncharged: the cost


def _burn_cpu(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU."""
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass


def test_idle_loop_cpu_is_the_loops_work_between_passes(executor):
    """What the device waited on the loop for: its thread's CPU from one pass's end to the next
    one's start; not before the first pass, not a pass's own off-loop compute, not waiting."""

    def compute():
        _burn_cpu(0.05)  # another thread's CPU
        return 1

    async def main():
        dev = Device("gpu")
        _burn_cpu(0.05)  # before the first pass: nothing to wait for yet
        await dev.run(compute, executor=executor, cost=None, n_tokens=1)
        _burn_cpu(0.03)  # the host work the next pass waits for
        await asyncio.sleep(0.05)  # waiting costs no CPU
        await dev.run(compute, executor=executor, cost=None, n_tokens=1)
        before = dev.stats.copy()
        await dev.run(compute, executor=executor, cost=None, n_tokens=1)  # back to back
        return dev, before

    dev, before = clock.run(main)
    assert 0.03 <= dev.stats.idle_loop_cpu_s < 0.045
    since = dev.stats.report(since=before)
    assert since["passes"] == 1 and since["idle_loop_cpu_s"] < 0.01
    assert dev.stats.report()["passes"] == 3
