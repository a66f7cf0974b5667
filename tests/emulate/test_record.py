"""``wanspec emulate --record``: per-position draft outcomes, the trace file, and its replay."""

from __future__ import annotations

import dataclasses

import json

import pytest
from typer.testing import CliRunner

from helpers import save_tiny_model
from wanspec.cli.app import app
from wanspec.emulate.record import record_request, trace_header
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.sampling import SamplingParams, draft_choice
from wanspec.simulate.trace import read_trace

PROMPT = "To be, or not to be, that is"


def _incremental_outcomes(draft, prompt, output, sampling):
    """What a worker pass on each committed prefix proposes: one prefix forward per position."""
    seq = [*prompt, *output]
    out = {}
    for j in range(len(prompt), len(seq)):
        logits = draft.forward(draft.new_cache(), 0, seq[:j])
        c = draft_choice(logits[-1], j, sampling)
        out[j] = (c.token == seq[j], c.entropy)
    return out


@pytest.mark.parametrize("sampling", [SamplingParams(),
                                      SamplingParams(temperature=0.9, top_k=40, seed=11)])
def test_every_output_position_gets_the_outcome_of_a_draft_on_the_committed_prefix(
        target, near_draft, sampling):
    engine = LocalEngine(target, timing=TimingConfig.emulate(30, 4))
    res = engine.generate(PROMPT, mode="target", max_tokens=24, sampling=sampling,
                          ignore_eos=True)
    prompt = target.encode(PROMPT)
    rec = record_request(near_draft, prompt, res.token_ids, sampling)
    assert rec.prompt_tokens == len(prompt) and rec.output_tokens == 24
    want = _incremental_outcomes(near_draft, prompt, res.token_ids, sampling)
    assert sorted(rec.drafts) == sorted(want)
    assert [rec.drafts[j][0] for j in sorted(want)] == [want[j][0] for j in sorted(want)]
    for j, (_, ent) in want.items():
        assert rec.drafts[j][1] == pytest.approx(ent, rel=1e-4, abs=1e-5)
    # the near draft is right most of the time, but not always: both outcomes are recorded
    assert 0 < sum(a for a, _ in rec.drafts.values()) < len(rec.drafts)
    # after each miss: the entropy of the draft's next proposal on its own wrong token
    seq = [*prompt, *res.token_ids]
    misses = [j for j in sorted(want) if not want[j][0] and j + 1 < len(seq)]
    assert misses and sorted(rec.after_miss) == misses
    for j in misses:
        wrong = draft_choice(near_draft.forward(near_draft.new_cache(), 0, seq[:j])[-1], j,
                             sampling).token
        logits = near_draft.forward(near_draft.new_cache(), 0, [*seq[:j], wrong])
        entropy = draft_choice(logits[-1], j + 1, sampling).entropy
        assert rec.after_miss[j] == pytest.approx(entropy, rel=1e-4, abs=1e-5)


def test_identical_draft_accepts_everything(target, same_draft):
    res = LocalEngine(target).generate(PROMPT, mode="target", max_tokens=12, ignore_eos=True)
    rec = record_request(same_draft, target.encode(PROMPT), res.token_ids, SamplingParams())
    assert all(a for a, _ in rec.drafts.values()) and len(rec.drafts) == 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory, target, near_draft):
    root = tmp_path_factory.mktemp("record")
    (root / "prompts.txt").write_text("To be, or not to be\nwhether 'tis nobler in the mind\n")
    return {"target": save_tiny_model(target, root / "target"),
            "draft": save_tiny_model(near_draft, root / "draft"), "root": root}


def _emulate(pair, *args):
    return CliRunner().invoke(app, [
        "emulate", "--target", str(pair["target"]), "--draft", str(pair["draft"]),
        "--prompts", str(pair["root"] / "prompts.txt"), "--max-tokens", "10", *args])


def test_cli_record_writes_a_trace_that_simulate_replays_with_the_recorded_costs(pair):
    path = pair["root"] / "trace.jsonl"
    r = _emulate(pair, "--policy", "remote", "--target-ms", "20", "--draft-ms", "2.5",
                 "--verify-per-token-ms", "0.25", "--gamma", "3", "--record", str(path))
    assert r.exit_code == 0, r.output
    assert f"recorded 2 requests to {path}" in r.output
    trace = read_trace(path)
    assert len(trace.requests) == 2
    assert all(q.output_tokens is not None and 1 <= q.output_tokens <= 10
               for q in trace.requests)
    h = trace.header
    assert (h["target_ms"], h["draft_ms"], h["verify_per_token_ms"], h["gamma"]) == (20, 2.5, 0.25, 3)
    # every output position is in the trace
    for q in trace.requests:
        assert sorted(q.drafts) == list(range(q.prompt_tokens, q.prompt_tokens + q.output_tokens))

    r = CliRunner().invoke(app, ["simulate", "--trace", str(path), "--policy", "remote",
                                 "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "gamma=3, target 20+0.25/tok ms, draft 2.5 ms, 2 req x <= 128 tok" in r.output
    r = CliRunner().invoke(app, ["simulate", "--trace", str(path), "--policy", "remote",
                                 "--target-ms", "50", "--gamma", "5", "--requests", "4",
                                 "--json"])
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert {(x["target_ms"], x["gamma"], x["requests"], x["draft_ms"]) for x in recs} == {
        (50, 5, 4, 2.5)}


def test_a_trace_recorded_with_host_overhead_says_so_and_simulate_notes_it(pair):
    path = pair["root"] / "host_trace.jsonl"
    r = _emulate(pair, "--policy", "remote", "--host-overhead", "measured", "--record", str(path))
    assert r.exit_code == 0, r.output
    assert read_trace(path).header["host_overhead"] == "measured"
    r = CliRunner().invoke(app, ["simulate", "--trace", str(path), "--policy", "remote",
                                 "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "recorded with --host-overhead measured" in " ".join(r.stderr.split())
    plain = pair["root"] / "plain_trace.jsonl"
    assert _emulate(pair, "--policy", "remote", "--record", str(plain)).exit_code == 0
    assert "host_overhead" not in read_trace(plain).header
    assert "host_stack_ms" not in read_trace(path).header  # no transport stack charged


def test_a_trace_header_carries_the_transport_stack_charged(target, near_draft):
    charged = dataclasses.replace(TimingConfig.emulate(30, 4), host_overhead=True)
    head = trace_header(target, near_draft, charged, 4, 8, SamplingParams(), host_stack_ms=0.042)
    assert (head["host_overhead"], head["host_stack_ms"]) == ("measured", 0.042)


def test_cli_record_to_an_unwritable_path_is_a_user_error(pair, tmp_path):
    r = _emulate(pair, "--policy", "remote", "--record", str(tmp_path / "no" / "dir" / "t.jsonl"))
    assert r.exit_code != 0
    assert "cannot write" in r.output
