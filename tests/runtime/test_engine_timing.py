"""Emulated device timing through LocalEngine: virtual, exact and deterministic."""

from __future__ import annotations

import math

import pytest

from helpers import RecordingLM, ScriptedLM
from wanspec.errors import WanspecError
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.timing.device import PassCost

N = 20


@pytest.fixture(scope="module")
def prompt(target):
    return target.encode("To be, or not")


def test_timing_config_validation_and_describe():
    assert not TimingConfig().emulated and TimingConfig().describe() == "measured"
    with pytest.raises(WanspecError):
        TimingConfig(target=PassCost(30))
    t = TimingConfig.emulate(30, 4, 0.5)
    assert t.emulated and t.target == PassCost(30, 0.5) and t.draft == PassCost(4, 0.0)
    assert t.describe() == "emulated (target 30 ms + 0.5 ms/token, draft 4 ms)"


@pytest.mark.parametrize("drafter", ["same_draft", "random_draft", "near_draft"])
@pytest.mark.parametrize("gamma", [2, 5])
def test_emulated_wall_time_is_the_sum_of_pass_costs(request, target, prompt, drafter, gamma):
    draft = request.getfixturevalue(drafter)
    engine = LocalEngine(target, draft, timing=TimingConfig.emulate(30, 4))
    res = engine.generate(prompt, mode="sd", gamma=gamma, ignore_eos=True, max_tokens=N)
    m = res.metrics
    tp, dp = m["target_passes"], m["draft_passes"]["controller"]
    expected = 0.030 * tp + 0.004 * dp
    assert abs(m["wall_s"] - expected) <= 1e-9
    dev = res.devices["controller"]
    assert abs(dev["busy_s"] - expected) <= 1e-9
    assert dev["passes"] == tp + dp
    assert dev["passes_by_model"] == {"target": tp, "draft": dp}
    assert abs(m["ttft_s"] - 0.030) <= 1e-12  # the prefill is the first target pass
    assert res.timing.startswith("emulated")
    # deterministic: a second run gives the very same numbers
    again = engine.generate(prompt, mode="sd", gamma=gamma, ignore_eos=True, max_tokens=N)
    assert again.token_ids == res.token_ids
    assert again.metrics["wall_s"] == m["wall_s"]
    assert again.metrics["tpot_s_p95"] == m["tpot_s_p95"]


def test_emulated_target_only(target, prompt):
    res = LocalEngine(target, timing=TimingConfig.emulate(30, 4)).generate(
        prompt, mode="target", ignore_eos=True, max_tokens=N)
    assert abs(res.metrics["wall_s"] - 0.030 * N) <= 1e-9
    assert res.metrics["tpot_s_p50"] == pytest.approx(0.030, abs=1e-12)


def test_per_token_costs_follow_the_fed_lengths(target, prompt):
    """base + per_token * (tokens fed - 1), summed over the passes each model actually ran."""
    ref = LocalEngine(target).generate(prompt, mode="target", ignore_eos=True, max_tokens=N)
    oracle = ScriptedLM(prompt + ref.token_ids, wrong_positions={len(prompt) + 3},
                        tokenizer=target.tokenizer)
    t_rec, d_rec = RecordingLM(target), RecordingLM(oracle)
    timing = TimingConfig.emulate(30, 4, verify_per_token_ms=1.5, draft_per_token_ms=0.25)
    try:
        res = LocalEngine(t_rec, d_rec, timing=timing).generate(prompt, mode="sd", gamma=4,
                                                                ignore_eos=True, max_tokens=N)
    finally:
        oracle.close()
    assert res.token_ids == ref.token_ids
    expected = (sum(timing.target.seconds(n) for _, n in t_rec.passes)
                + sum(timing.draft.seconds(n) for _, n in d_rec.passes))
    assert len(t_rec.passes) == res.metrics["target_passes"]
    assert len(d_rec.passes) == res.metrics["draft_passes"]["controller"]
    assert any(n > 1 for _, n in t_rec.passes[1:])  # verification windows were costed per token
    assert abs(res.metrics["wall_s"] - expected) <= 1e-9
    assert abs(res.devices["controller"]["busy_s"] - expected) <= 1e-9


def test_measured_timing_records_real_busy_time(target, same_draft, prompt):
    res = LocalEngine(target, same_draft).generate(prompt, mode="sd", ignore_eos=True,
                                                   max_tokens=8)
    dev = res.devices["controller"]
    assert res.timing == "measured"
    assert dev["busy_s"] > 0 and dev["compute_s"] > 0
    # passes on one device are serialised inside the request: busy time fits in the wall time
    assert res.metrics["wall_s"] >= dev["busy_s"] - 1e-9
    assert math.isfinite(res.metrics["tpot_s_mean"])
