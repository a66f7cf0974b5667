"""The simulator drives the cores exactly as the asyncio runtime does.

``wanspec.emulate.runner.Emulation`` (asyncio adapters, in-process link, emulated devices on a
virtual clock) decodes the simulator's synthetic sequences through :mod:`synthetic_lm`; every
record must be equal.  A millisecond of jitter breaks exact ties between a pass finishing and a
message arriving at the same instant: the simulator handles simultaneous events in the order
they were scheduled, asyncio in an order of its own, and neither is more right than the other.

Draft trees: the simulated worker grows them (it announces the "branches" capability); an
emulated deployment does once the runtime's worker announces it too.  Until then the comparison
runs without branches on both sides (what the emulated controller falls back to).
"""

from __future__ import annotations

import pytest

from synthetic_lm import SyntheticLM
from wanspec.baselines import BASELINES
from wanspec.emulate.runner import Emulation, EmulationConfig
from emulated_trees import emulated_branches
from wanspec.runtime.engine import TimingConfig
from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.sweep import parse_sweep, run_sweep
from wanspec.simulate.worlds import worlds

KEYS = ["tokens", "latency_vs_best_sd", "busy_site_draft_passes_vs_best_sd", "best_sd_gamma", "tpot_ms_mean", "tpot_ms_p95", "ttft_ms_mean", "e2e_ms_per_token",
        "busy_site_draft_passes_per_token", "worker_draft_passes_per_token",
        "target_passes_per_token", "wasted_drafts_per_token", "stall_ms_per_token",
        "acceptance_rate", "mean_acceptance_length", "identical_to_target_only"]


@pytest.fixture(scope="module")
def both():
    cfg = SimConfig(vocab=64, requests=3, max_tokens=40, prompt_tokens=12, jitter_ms=1.0,
                    alpha=0.75)
    rtts = (0.0, 30.0)
    ws = worlds(cfg)
    target, draft = SyntheticLM(ws, "target", 64), SyntheticLM(ws, "draft", 64)
    cfg = cfg.with_values({"branches": emulated_branches(draft)})
    try:
        emu = Emulation(target, draft, EmulationConfig(
            rtts_ms=rtts, jitter_ms=cfg.jitter_ms, max_tokens=cfg.max_tokens,
            timing=TimingConfig.emulate(cfg.target_ms, cfg.draft_ms, cfg.verify_per_token_ms),
            entropy_threshold=cfg.entropy_threshold, max_slowdown=cfg.max_slowdown,
            seed=cfg.seed))
        emulated = emu.run([w.prompt for w in ws])
    finally:
        target.close()
        draft.close()
    simulated = run_sweep(cfg, [parse_sweep("rtt=" + ",".join(map(str, rtts)))], POLICIES, jobs=1)
    return emulated, simulated


def test_every_mode_and_rtt_gives_the_same_record(both):
    emulated, simulated = both
    assert len(emulated) == len(simulated) == 2 * (len(BASELINES) + len(POLICIES))
    for e in emulated:
        s = next(r for r in simulated if r["rtt_ms"] == e["rtt_ms"] and r["mode"] == e["mode"])
        for k in KEYS:
            assert s[k] == pytest.approx(e[k], rel=1e-9, abs=1e-12), (e["mode"], e["rtt_ms"], k)
