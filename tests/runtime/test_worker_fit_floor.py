"""What the worker's tree fit learns from a pass (``WorkerService``): the pass's time, or where
``--draft-ms`` is a floor on real time, its real compute against that floor."""

from __future__ import annotations

import asyncio

import pytest

from wanspec.core.batcher import PassKind
from wanspec.runtime.worker import WorkerService
from wanspec.timing import clock
from wanspec.timing.device import PassCost


def one_pass(service: WorkerService, *, virtual: bool, charge_host: bool = False):
    """Run one draft pass of 3 sequences through the service's device and fit it; the fitted
    sample and the load's floor."""
    async def main():
        t0 = asyncio.get_running_loop().time()

        def work():  # a forward that computes ~2 ms, far below the 50 ms floor
            import time
            time.sleep(0.002)
        await service.device.run(work, executor=service.draft.executor,
                                 cost=service.placed.cost, n_tokens=3, sequences=3)
        service._on_pass_done(PassKind.DRAFT, 3, 1, asyncio.get_running_loop().time() - t0)
        return service.load.passes.samples[-1], service.load.floor_s

    return clock.run(main, virtual=virtual, charge_host=charge_host)


@pytest.fixture()
def service(random_draft):
    return WorkerService(random_draft, cost=PassCost(50.0))


def test_on_real_time_the_fit_learns_the_compute_under_the_floor(service):
    (sequences, seconds), floor = one_pass(service, virtual=False)
    assert sequences == 3 and floor == pytest.approx(0.050)
    assert 0.002 <= seconds < 0.045  # the compute (~2 ms), not the 50 ms the pass occupied


def test_charging_the_host_the_cost_is_a_floor_too(service):
    (_, seconds), floor = one_pass(service, virtual=True, charge_host=True)
    assert floor == pytest.approx(0.050) and 0.002 <= seconds < 0.045


def test_on_the_plain_virtual_clock_the_fit_sees_the_emulated_cost(service):
    (_, seconds), floor = one_pass(service, virtual=True)
    assert floor == 0.0 and seconds == pytest.approx(0.050)  # exact: deterministic runs


def test_without_an_emulated_cost_the_pass_time_is_fitted(random_draft):
    service = WorkerService(random_draft)  # measured timing: no floor
    (_, seconds), floor = one_pass(service, virtual=False)
    assert floor == 0.0 and 0.002 <= seconds < 1.0
