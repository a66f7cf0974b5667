"""Charging the host per site: each site's Python takes time on its own timeline only.

In an in-process deployment both sites share one loop, but as real processes they run on two
hosts; a virtual clock charging the host (``emulate --host-overhead measured``) must not make
the worker's Python delay the busy site's, nor let a site's own callbacks overlap each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import time

import pytest

from wanspec.timing import clock


def _spin(seconds: float) -> None:
    """Host work: Python on the loop's own thread."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def executor():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    yield ex
    ex.shutdown(wait=True)


def _run(main):
    return clock.run(main, virtual=True, charge_host=True)


def test_one_sites_work_does_not_delay_another_site():
    async def worker(log):
        _spin(0.05)  # 50 ms of the worker's host
        await asyncio.sleep(0)  # its next callback: after its own work
        log["worker_next"] = clock.now()

    async def main():
        log = {}
        task = asyncio.create_task(worker(log), context=clock.site_context("worker"))
        await asyncio.sleep(0.01)  # the main site's timer, due while the worker is busy
        log["main_woke"] = clock.now()
        await task
        return log, asyncio.get_running_loop()

    log, loop = _run(main)
    # the main site woke on time: the worker's 50 ms were not on its timeline
    assert 0.01 <= log["main_woke"] < 0.04
    assert log["worker_next"] >= 0.05
    assert set(loop.host_by_site) == {"main", "worker"}
    assert loop.host_by_site["worker"] >= 0.05


def test_a_sites_callbacks_run_one_after_another_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        def step(name: str) -> None:
            seen.append((name, clock.now()))
            _spin(0.01)

        for name in "abc":
            loop.call_soon(step, name)
        await asyncio.sleep(0.1)
        return seen

    seen = _run(main)
    assert [name for name, _ in seen] == ["a", "b", "c"]
    starts = [t for _, t in seen]
    # each started only once the one before had taken its 10 ms of the site's host
    assert starts[1] - starts[0] >= 0.01 and starts[2] - starts[1] >= 0.01


def test_a_timer_due_when_the_site_frees_does_not_overtake_the_waiting_line():
    """A site's timer that fires at the very time its waiting line is released still waits its
    turn: callbacks of one site run in the order they became ready."""

    async def main():
        loop = asyncio.get_running_loop()
        site = contextvars.copy_context()  # the main site's
        order: list[str] = []

        def first() -> None:
            clock.charge_host(0.01)  # the site is busy until ~0.01
            loop.call_soon(order.append, "waiting")  # ready now: must wait for ~0.01

        def arm_timer() -> None:  # no site: runs after "waiting" has joined its line
            due = loop._timelines.free_at[clock.MAIN_SITE]  # the line's release time
            loop.call_at(due, order.append, "timer", context=site)

        loop.call_soon(first)
        await asyncio.sleep(0)  # (let first run before arm_timer is queued behind "waiting")
        loop.call_soon(arm_timer, context=clock.no_site_context())
        await asyncio.sleep(0.05)
        return order

    assert _run(main) == ["waiting", "timer"]


def test_a_released_callback_cancelled_before_it_runs_passes_its_turn_on():
    """The head of a waiting line is put back in the ready queue; cancelled before it runs, the
    next in line still runs (the line is never left without a release)."""

    async def main():
        loop = asyncio.get_running_loop()
        worker = clock.site_context("worker")  # (not main's site: a stuck line cannot hang main)
        ran: list[str] = []
        loop.call_soon(clock.charge_host, 0.01, context=worker)  # busy until ~0.01
        a = loop.call_soon(ran.append, "a", context=worker)  # both wait for it, in this order
        loop.call_soon(ran.append, "b", context=worker)
        timelines = loop._timelines
        release = timelines._release

        def release_then_cancel(site: str) -> None:  # "a" cancelled once back in the queue
            release(site)
            if timelines._released.get(site) is a:
                a.cancel()

        timelines._release = release_then_cancel
        await asyncio.sleep(0.05)
        return ran, timelines

    ran, timelines = _run(main)
    assert ran == ["b"]
    assert not timelines._waiting and not timelines._releasing and not timelines._released


def test_each_held_back_callback_waits_once():
    """Releasing a line puts back its head alone: n callbacks behind a busy site are held back
    n times, not n(n+1)/2 (each re-deferred after every release)."""

    async def main():
        loop = asyncio.get_running_loop()
        timelines = loop._timelines
        waits = 0
        wait = timelines._wait

        def counting_wait(site, handle):
            nonlocal waits
            waits += 1
            wait(site, handle)

        timelines._wait = counting_wait
        order: list[int] = []

        def step(i: int) -> None:
            order.append(i)
            clock.charge_host(0.001)

        clock.charge_host(0.01)  # busy until ~0.01, then each step takes 1 ms
        for i in range(40):
            loop.call_soon(step, i)
        await asyncio.sleep(0.2)
        return order, waits

    order, waits = _run(main)
    assert order == list(range(40))
    # every step (and main's own wake-up, queued behind them) is held back once
    assert waits <= 42


def test_work_of_no_site_is_neither_charged_nor_held_back():
    async def main():
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_at(0.005, lambda: fired.append(loop.time()), context=clock.no_site_context())
        _spin(0.03)  # the main site is busy until ~0.03
        await asyncio.sleep(0.05)
        return fired, loop

    fired, loop = _run(main)
    assert fired == [pytest.approx(0.005)]
    assert set(loop.host_by_site) == {"main"}


def test_off_loop_work_releases_the_clock_while_its_site_is_busy(executor):
    """The thread's end frees the clock even though the awaiting task cannot resume until its
    site's host is free (that resumption needs the clock to move)."""

    async def busy_sibling():
        _spin(0.03)

    async def main():
        sibling = asyncio.create_task(busy_sibling())  # same site: the main one
        value = await clock.off_loop(executor, lambda: 3)
        await sibling
        return value, clock.now()

    value, t = _run(main)
    assert value == 3 and t >= 0.03


def test_without_charging_the_host_no_time_passes():
    async def main():
        task = asyncio.create_task(asyncio.sleep(0), context=clock.site_context("worker"))
        _spin(0.02)
        await task
        return clock.now(), asyncio.get_running_loop().host_by_site

    assert clock.run(main, virtual=True) == (0.0, {})


def test_declared_host_work_delays_only_its_own_site():
    """``clock.charge_host``: work a real site does that this process does not (a transport's
    stack) moves the running site's timeline, like its own Python, and no other site's."""

    async def worker(log):
        clock.charge_host(0.5)  # 500 ms declared, none spent
        await asyncio.sleep(0)
        log["worker_next"] = clock.now()

    async def main():
        log = {}
        task = asyncio.create_task(worker(log), context=clock.site_context("worker"))
        await asyncio.sleep(0.01)
        log["main_woke"] = clock.now()
        await task
        return log, asyncio.get_running_loop()

    log, loop = _run(main)
    # (upper bounds: this machine's own host time in between, generously)
    assert 0.5 <= log["worker_next"] < 0.7
    assert 0.01 <= log["main_woke"] < 0.3  # not after the worker's 500 ms
    assert 0.5 <= loop.host_by_site["worker"] < 0.7


def test_declared_host_work_is_ignored_unless_the_host_is_charged():
    async def main():
        clock.charge_host(0.2)
        await asyncio.sleep(0)
        return clock.now()

    assert clock.run(main, virtual=True) == 0.0


def test_negative_host_work_is_refused():
    async def main():
        clock.charge_host(-0.1)

    with pytest.raises(ValueError, match="cannot be negative"):
        _run(main)
