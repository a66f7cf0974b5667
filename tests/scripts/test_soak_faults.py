"""scripts/soak.py faults (scripts/soak_faults.py), CI-sized: randomized fault schedules on the virtual clock.

The full run (1,000 schedules) and its figures are in docs/reliability.md; this runs the first
25 schedules of another seed, and shows that the harness does see a divergence and a hang.
"""

from __future__ import annotations

import asyncio

import pytest
from soak_module import load

common, soak = load("soak_common"), load("soak_faults")
SCHEDULES = 25
SEED = 12  # the soak's recorded run uses seed 1: CI covers other schedules


@pytest.fixture(scope="module")
def pair():
    with common.one_thread():
        p = common.Pair()
        yield p
        p.close()


def test_fault_schedules_end_with_the_target_output_within_their_bounds(pair):
    report = soak.soak_faults(pair, SCHEDULES, SEED)
    assert report["schedules"] == SCHEDULES
    assert report["divergences"] == report["hangs"] == report["errors"] == 0, report["failed"]
    # faults of every kind happened, and requests both used and lost the worker
    assert all(n > 0 for n in report["faults"].values()), report["faults"]
    assert report["requests_using_the_worker"] > 0 and report["requests_losing_the_worker"] > 0
    # several workers: some schedules had them, and some requests moved to another worker
    assert report["schedules_with_several_workers"] > 0
    assert report["requests_moved_to_another_worker"] > 0, report


def test_schedules_are_reproducible_from_their_seed():
    assert soak.make_schedule(1, 7) == soak.make_schedule(1, 7)
    assert soak.make_schedule(1, 7) != soak.make_schedule(2, 7)


def _quiet_schedule():
    """No faults, a short clean link, policy remote: the worker's drafts are verified."""
    from wanspec.transport.inproc import LinkParams

    return soak.Schedule(0, LinkParams(rtt_ms=10.0), "remote", False, 4, "greedy", False,
                         (soak.Request(0, 24),), ())


def test_the_harness_sees_a_divergence(pair, monkeypatch):
    """A controller that accepts every draft commits the worker's tokens: caught."""
    from wanspec.core import controller

    monkeypatch.setattr(controller, "accept_prefix", lambda drafts, choices: (len(drafts),
                                                                               choices[-1]))
    r = soak.run_schedule(pair, _quiet_schedule())
    assert r.divergent and not r.ok


def test_the_harness_sees_a_hang(pair, monkeypatch):
    """A request that never finishes is cut at the schedule's virtual-time bound."""
    from wanspec.runtime.controller import RemoteEngine

    async def stuck(self, *args, **kwargs):
        await asyncio.sleep(1e9)

    monkeypatch.setattr(RemoteEngine, "_drive", stuck)
    r = soak.run_schedule(pair, _quiet_schedule())
    assert r.hung and "virtual" in r.hung and not r.ok
