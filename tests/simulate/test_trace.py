"""Trace format: reading, writing, errors, and replay as a match model."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.records import aggregate
from wanspec.simulate.sweep import run_sweep
from wanspec.simulate.trace import Trace, TraceRequest, read_trace, replay_request, write_trace
from wanspec.simulate.worlds import worlds

SMALL = Path(__file__).parent / "data" / "small_trace.jsonl"


def test_read_the_hand_written_trace():
    t = read_trace(SMALL)
    assert t.header["source"] == "hand-written"
    assert [r.prompt_tokens for r in t.requests] == [4, 6]
    r0 = t.requests[0]
    assert r0.drafts[4] == (True, 0.2) and r0.drafts[6] == (False, 2.5)
    assert r0.drafts[8] == (True, None)
    assert len(r0.drafts) == 6  # the repeated position 9 counts once
    assert t.alpha == pytest.approx(5 / 8)


def test_replay_uses_recorded_outcomes_and_fills_the_rest():
    t = read_trace(SMALL)
    cfg = SimConfig(match="trace", requests=3, max_tokens=30, separation=1.0)
    w0 = replay_request(cfg, t, 0)
    assert w0.n_prompt == 4 and len(w0.prompt) == 4
    assert [w0.match[p] for p in range(4, 10)] == [True, True, False, True, True, False]
    assert [w0.entropy[p] for p in (4, 5, 6, 7, 9)] == [0.2, 0.3, 2.5, 0.4, 1.9]
    assert w0.entropy[8] >= 0  # null: drawn from the entropy model
    w1 = replay_request(cfg, t, 1)
    assert w1.n_prompt == 6 and w1.match[6] is True and w1.match[7] is False
    w2 = replay_request(cfg, t, 2)  # request 2 wraps around to trace request 0
    assert w2.n_prompt == 4 and w2.match[4:10] == w0.match[4:10]
    assert w2.target != w0.target  # its own target sequence


def test_replayed_simulation_is_lossless_and_follows_the_trace():
    t = read_trace(SMALL)
    cfg = SimConfig(match="trace", requests=2, max_tokens=6, rtt_ms=0.0)
    res = simulate_remote(cfg, "always", worlds(cfg, t))
    assert all(r.lossless for r in res.requests)
    recs = run_sweep(cfg, [], POLICIES, trace=t, jobs=1)
    assert all(r["identical_to_target_only"] for r in recs)
    sd = next(r for r in recs if r["mode"] == "sd")
    # first SD round of request 0 drafts 4, 5, 6, 7: accepts 4 and 5, rejected at 6
    assert sd["per_token_acceptance"] <= 1.0


def test_a_complete_trace_reproduces_the_model_it_was_taken_from():
    """Write every position's outcome and entropy of an iid run as a trace: replay is identical."""
    cfg = SimConfig(requests=3, max_tokens=40, prompt_tokens=8, alpha=0.7, rtt_ms=30.0)
    reqs = []
    for w in worlds(cfg):
        tr = TraceRequest(w.n_prompt)
        for p in range(w.n_prompt, len(w.match)):
            tr.add(p, w.match[p], w.entropy[p])
        reqs.append(tr)
    buf = io.StringIO()
    write_trace(buf, reqs, {"source": "test"})
    lines = buf.getvalue().splitlines()
    assert json.loads(lines[0]) == {"wanspec_trace": 1, "source": "test"}
    trace = _read_text(buf.getvalue())
    replayed = replace(cfg, match="trace")
    for policy in ("entropy", "adaptive"):
        a = aggregate(simulate_remote(cfg, policy, worlds(cfg)), cfg)
        b = aggregate(simulate_remote(replayed, policy, worlds(replayed, trace)), cfg)
        b["match"] = a["match"]
        assert a == b


def _read_text(text: str) -> Trace:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write(text)
    try:
        return read_trace(fh.name)
    finally:
        Path(fh.name).unlink()


def test_add_window_records_only_tested_drafts():
    r = TraceRequest(10)
    r.add_window(10, [0.1, 0.2, 0.3, 0.4], accepted=1)  # accepted 10, rejected 11, 12-13 untested
    assert r.drafts == {10: (True, 0.1), 11: (False, 0.2)}
    r.add_window(12, [0.5, 0.6], accepted=2)  # all accepted
    assert r.drafts[12] == (True, 0.5) and r.drafts[13] == (True, 0.6)


@pytest.mark.parametrize("text,message", [
    ("not json\n", "not JSON"),
    ('{"wanspec_trace": 2}\n{"prompt_tokens": 3}\n', "unsupported version"),
    ('{"prompt_tokens": 3}\n{"wanspec_trace": 1}\n', "header must be the first line"),
    ('[1, 2]\n', "must be a JSON object"),
    ('{"prompt_tokens": 0}\n', "prompt_tokens must be an integer >= 1"),
    ('{"prompt_tokens": 3, "drafts": [[2, true, 0.1]]}\n', "must be an integer >= prompt_tokens"),
    ('{"prompt_tokens": 3, "drafts": [[3, "yes", 0.1]]}\n', "accepted must be"),
    ('{"prompt_tokens": 3, "drafts": [[3, true, -1]]}\n', "entropy must be"),
    ('{"prompt_tokens": 3, "drafts": [3, true]}\n', "is not \\[position"),
    ('{"wanspec_trace": 1}\n', "holds no requests"),
    ('{"wanspec_trace": 1, "target_ms": "fast"}\n{"prompt_tokens": 3}\n', "header target_ms must"),
    ('{"wanspec_trace": 1, "draft_ms": -1}\n{"prompt_tokens": 3}\n', "header draft_ms must"),
    ('{"wanspec_trace": 1, "gamma": 0}\n{"prompt_tokens": 3}\n', "header gamma must"),
    ('{"prompt_tokens": 3, "output_tokens": 0}\n', "output_tokens must be"),
])
def test_bad_traces_are_one_line_errors(text, message):
    with pytest.raises(WanspecError, match=message) as e:
        _read_text(text)
    assert "\n" not in str(e.value)


def test_missing_trace_file_is_a_user_error(tmp_path):
    with pytest.raises(WanspecError, match="cannot read trace"):
        read_trace(tmp_path / "nope.jsonl")


def test_trace_replay_in_parallel_processes_equals_one_process():
    t = read_trace(SMALL)
    cfg = SimConfig(match="trace", requests=2, max_tokens=12)
    from wanspec.simulate.sweep import parse_sweep

    sweeps = [parse_sweep("rtt=0,30")]
    assert run_sweep(cfg, sweeps, POLICIES, trace=t, jobs=2) == \
        run_sweep(cfg, sweeps, POLICIES, trace=t, jobs=1)


def test_output_tokens_round_trip_and_cap_the_replayed_request():
    reqs = [TraceRequest(5, {5: (True, 0.1), 6: (False, 2.0)}, output_tokens=7), TraceRequest(4)]
    buf = io.StringIO()
    write_trace(buf, reqs, {"target_ms": 12.5})
    t = _read_text(buf.getvalue())
    assert [r.output_tokens for r in t.requests] == [7, None]
    assert t.header["target_ms"] == 12.5
    cfg = SimConfig(match="trace", max_tokens=20, requests=2)
    w0, w1 = (replay_request(cfg, t, i) for i in range(2))
    assert (w0.max_tokens, len(w0.reference())) == (7, 7)
    assert (w1.max_tokens, len(w1.reference())) == (20, 20)
    res = simulate_remote(cfg, "adaptive", [w0, w1])
    assert [r.metrics.committed_tokens for r in res.requests] == [7, 20]
    assert all(r.lossless for r in res.requests)


def test_the_entropy_after_a_miss_round_trips_and_is_what_a_wrong_path_reports(tmp_path):
    """A fourth element on a rejected entry: the entropy the draft reports after its own miss;
    replayed drafts on a wrong prefix report it (here the drafts at 13 and 14, after a miss at
    12)."""
    from wanspec.simulate.models import DraftCache

    req = TraceRequest(10, output_tokens=8)
    for pos in range(10, 18):
        req.add(pos, pos != 12, 0.1, 0.42 if pos == 12 else None)
    path = tmp_path / "t.jsonl"
    write_trace(path, [req])
    line = json.loads(path.read_text().splitlines()[1])
    assert [12, False, 0.1, 0.42] in line["drafts"] and [13, True, 0.1] in line["drafts"]
    parsed = read_trace(path)
    assert parsed.requests[0].after_miss == {12: 0.42}
    world = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), parsed, 0)
    cache, target = DraftCache(), world.target
    wrong = (target[12] + 1) % 32000  # the committed prefix up to 12, then a wrong token
    assert world.draft(cache, 0, (*target[:12], wrong))[1] == pytest.approx(0.42)
    assert world.draft(cache, 13, (world.wrong[13],))[1] == pytest.approx(0.42)


def test_an_entropy_after_a_miss_must_be_a_number(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_tokens": 2, "drafts": [[2, false, 0.1, "x"]]}\n')
    with pytest.raises(WanspecError, match="entropy must be a number"):
        read_trace(path)
