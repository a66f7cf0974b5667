"""scripts/soak.py fuzz (scripts/soak_fuzz.py), CI-sized: mutated frames into a live worker and the controller's side.

The full run (100,000 frames each) and its figures are in docs/reliability.md; this feeds 2,000
mutated frames to each (another seed), and shows that the harness does see a crash.
"""

from __future__ import annotations

import pytest
from soak_module import load

common, soak, cli = load("soak_common"), load("soak_fuzz"), load("soak")
FRAMES = 2000
SEED = 12  # the soak's recorded run uses seed 1


@pytest.fixture(scope="module")
def pair():
    with common.one_thread():
        p = common.Pair()
        yield p
        p.close()


def test_fuzzed_frames_crash_nothing_and_the_worker_serves_identically_afterwards(pair):
    report = soak.soak_fuzz(pair, FRAMES, SEED)
    worker, controller = report["worker"], report["controller"]
    assert worker["frames"] >= FRAMES and controller["frames"] >= FRAMES
    assert all(n > 0 for n in worker["by_mutator"].values()), worker["by_mutator"]
    assert report["crashes"] == 0, (worker["crash_records"], controller["failed"])
    assert report["hangs"] == report["divergences"] == 0, controller["failed"]
    assert worker["open_connections_after"] == worker["sessions_after"] == 0
    assert report["worker_serves_identically_afterwards"], worker["afterwards"]
    assert cli.fuzz_verdict(report)


def test_the_harness_sees_crashes(pair, monkeypatch):
    """A worker core and a link core that raise on a Ping / Pong are counted as crashes."""
    from wanspec.core.link import LinkCore
    from wanspec.core.worker import WorkerCore
    from wanspec.protocol.messages import Ping, Pong

    def raising(original, kind):
        def on_message(self, msg, now):
            if isinstance(msg, kind):
                raise RuntimeError("planted")
            return original(self, msg, now)
        return on_message

    monkeypatch.setattr(WorkerCore, "on_message", raising(WorkerCore.on_message, Ping))
    monkeypatch.setattr(LinkCore, "on_message", raising(LinkCore.on_message, Pong))
    pair.prepare((common.PROMPTS[0], name) for name in common.SAMPLINGS)
    worker = soak.asyncio.run(soak._fuzz_worker(pair, 300, SEED))
    controller = soak.fuzz_controller(300, SEED)
    assert worker["crashes"] > 0 and controller["crashes"] > 0
