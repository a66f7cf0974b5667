"""``InprocDeployment`` lifecycle: its per-site threads end with it."""

from __future__ import annotations

import threading
import time

from remote_support import virtual
from wanspec.runtime.engine import TimingConfig
from wanspec.runtime.inproc import InprocDeployment
from wanspec.transport.inproc import LinkParams


def _site_threads() -> set[str]:
    return {t.name for t in threading.enumerate()
            if t.name.startswith(("wanspec-worker-draft", "wanspec-local-draft"))}


def test_deployments_do_not_leak_executor_threads(target, near_draft):
    before = _site_threads()

    async def main():
        for _ in range(3):
            async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=20),
                                        timing=TimingConfig.emulate(30, 4)) as dep:
                r = await dep.generate("To be, or not to be", max_tokens=6)
                assert len(r.token_ids) >= 1

    virtual(main)
    deadline = time.monotonic() + 5.0
    while _site_threads() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _site_threads() - before == set()


def test_the_worker_limit_is_its_own(target, near_draft):
    """``limits`` bound the busy site's passes; the worker's draft passes have their own limit
    (as ``wanspec worker --max-batch``), by default the worker's default."""
    from wanspec.core.batcher import BatchLimits
    from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH

    link = LinkParams(rtt_ms=20)
    dep = InprocDeployment(target, near_draft, link=link, limits=BatchLimits(max_sequences=3))
    assert dep.service.max_batch == dep.service.load.max_batch == DEFAULT_WORKER_MAX_BATCH
    dep = InprocDeployment(target, near_draft, link=link, worker_max_batch=5)
    assert dep.service.max_batch == dep.service.load.max_batch == 5
