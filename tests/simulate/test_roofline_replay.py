"""A replayed trace charges what its emulated run's devices charged: the roofline terms (KV read,
compute, sequences of a batched pass) travel in the header, and the simulator's passes cost
exactly ``PassCost.seconds`` of the same shape."""

from __future__ import annotations

import dataclasses

import pytest

from wanspec.emulate.record import trace_header
from wanspec.errors import WanspecError
from wanspec.runtime.engine import TimingConfig
from wanspec.sampling import SamplingParams
from wanspec.simulate.baselines import simulate_local
from wanspec.simulate.config import Roofline, SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.load import pass_costs
from wanspec.simulate.records import aggregate
from wanspec.simulate.trace import read_trace
from wanspec.simulate.worlds import worlds
from wanspec.timing.device import DEFAULT_DRAFT_COST, DEFAULT_TARGET_COST, PassCost


class _Named:
    name = "m"


def test_the_header_records_the_roofline_terms_the_emulated_run_charged():
    head = trace_header(_Named(), _Named(), TimingConfig.deployment(), 4, 64, SamplingParams())
    assert Roofline.from_header(head) == Roofline(
        DEFAULT_TARGET_COST.kv_ms_per_ktoken, DEFAULT_TARGET_COST.compute_ms_per_token,
        DEFAULT_TARGET_COST.per_sequence_ms, DEFAULT_DRAFT_COST.kv_ms_per_ktoken,
        DEFAULT_DRAFT_COST.compute_ms_per_token, DEFAULT_DRAFT_COST.per_sequence_ms)
    flat = trace_header(_Named(), _Named(), TimingConfig.emulate(30, 4), 4, 64, SamplingParams())
    assert flat["target_per_sequence_ms"] == 0.0  # recorded: the run charged none
    assert Roofline.from_header(flat) == Roofline()
    assert Roofline.from_header({"target_ms": 30}) is None  # a trace from before the terms


def test_under_load_a_replay_charges_its_recorded_terms_and_otherwise_the_defaults():
    defaults = Roofline.of(DEFAULT_TARGET_COST, DEFAULT_DRAFT_COST)
    target, draft = pass_costs(SimConfig())  # no trace: a batched pass priced by its shape
    assert (target.per_sequence_ms, draft.per_sequence_ms) == (
        defaults.target_per_sequence_ms, defaults.draft_per_sequence_ms) != (0.0, 0.0)
    target, draft = pass_costs(SimConfig(roofline=Roofline()))  # a flat-cost emulated run's
    assert target == PassCost(30.0, 0.5) and draft == PassCost(4.0, 0.0)
    recorded = Roofline(target_kv_ms_per_ktoken=1.5, draft_per_sequence_ms=0.25)
    target, draft = pass_costs(SimConfig(roofline=recorded))
    assert (target.kv_ms_per_ktoken, draft.per_sequence_ms) == (1.5, 0.25)
    assert target.per_sequence_ms == 0.0


def test_a_negative_roofline_term_in_a_header_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"wanspec_trace": 1, "draft_per_sequence_ms": -1}\n'
                    '{"prompt_tokens": 2, "drafts": [[2, true, 0.1]]}\n')
    with pytest.raises(WanspecError, match="draft_per_sequence_ms must be a number >= 0"):
        read_trace(path)


def test_target_only_pays_the_kv_read_of_its_growing_context():
    roof = Roofline(target_kv_ms_per_ktoken=2.0)
    cfg = SimConfig(requests=1, max_tokens=20, prompt_tokens=9, roofline=roof)
    (req,) = simulate_local(cfg, "target", worlds(cfg)).requests
    cost = PassCost(cfg.target_ms, cfg.verify_per_token_ms, kv_ms_per_ktoken=2.0)
    # after the prefill, each step feeds one token at position 9, 10, ...: context start + 1
    want = [cost.seconds(1, context=p + 1) for p in range(9, 9 + 19)]
    assert req.metrics.token_gaps == pytest.approx(want, rel=1e-12)
    flat = SimConfig(requests=1, max_tokens=20, prompt_tokens=9)  # (no trace: no KV term)
    tpot = aggregate(simulate_local(flat, "target", worlds(flat)), flat)["tpot_ms_mean"]
    assert tpot == pytest.approx(30.0, rel=1e-12)


def test_the_worker_pays_for_each_sequence_of_a_batched_tree_pass():
    """With draft trees the worker's passes carry many lanes; a per-sequence term makes them
    slower, and the worker's busy time says so."""
    base = SimConfig(requests=2, max_tokens=40, rtt_ms=30.0, branches=4)
    slow = dataclasses.replace(base, roofline=Roofline(draft_per_sequence_ms=1.0))
    busy = [simulate_remote(c, "remote", worlds(c)).worker_busy_s for c in (base, slow)]
    assert busy[1] > busy[0]
    for c in (base, slow):
        assert all(r.lossless for r in simulate_remote(c, "always", worlds(c)).requests)
