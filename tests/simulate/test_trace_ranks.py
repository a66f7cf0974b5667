"""Traces hold the rank of the target's token among a rejected draft's choices; replay uses it,
and older traces without ranks replay with the configured rank model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate.config import SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.trace import Trace, TraceRequest, read_trace, replay_request, write_trace
from wanspec.simulate.worlds import worlds

SMALL = Path(__file__).parent / "data" / "small_trace.jsonl"


def _request() -> TraceRequest:
    req = TraceRequest(10, output_tokens=8)
    for pos, rank in zip(range(10, 18), (1, 2, 1, 3, 0, 1, 4, 2)):
        req.add(pos, rank == 1, 0.5, None, None if rank == 1 else rank)
    return req


def test_ranks_round_trip_as_an_optional_list_of_pairs(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [_request(), TraceRequest(4, {4: (False, 1.0)})])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[1]["ranks"] == [[11, 2], [13, 3], [14, 0], [16, 4], [17, 2]]
    assert "ranks" not in lines[2]  # nothing recorded: no field (what older traces look like)
    t = read_trace(path)
    assert t.requests[0].ranks == {11: 2, 13: 3, 14: 0, 16: 4, 17: 2}
    assert t.requests[1].ranks == {}
    assert t.rank_probs == pytest.approx((2 / 5, 1 / 5, 1 / 5))


def test_recorded_probabilities_round_trip_and_are_what_the_replayed_draft_reports(tmp_path):
    req = _request()
    req.probs.update({11: (0.4, 0.3, 0.1), 12: (0.9,)})
    req.probs_after_miss[11] = (0.25, 0.2, 0.15, 0.1)
    path = tmp_path / "t.jsonl"
    write_trace(path, [req])
    line = json.loads(path.read_text().splitlines()[1])
    assert line["probs"] == [[11, 0.4, 0.3, 0.1], [12, 0.9]]
    assert line["probs_after_miss"] == [[11, 0.25, 0.2, 0.15, 0.1]]
    t = read_trace(path)
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), t, 0)
    assert (w.top[11], w.alt_p[11]) == (0.4, (0.3, 0.1, 0.0))  # padded: no 3rd alternative
    assert (w.top[12], w.alt_p[12]) == (0.9, (0.0, 0.0, 0.0))
    assert (w.top_bad[12], w.alt_p_bad[12]) == (0.25, (0.2, 0.15, 0.1))
    assert w.entropy[11] == 0.5  # the recorded entropy, whatever the probabilities
    # an unrecorded position: the synthetic distribution of its recorded entropy
    from wanspec.simulate.models import alt_probs, draft_distribution
    top, _ = draft_distribution(0.5, 32000)
    assert (w.top[13], w.alt_p[13]) == (top, alt_probs(top)) and w.entropy[13] == 0.5


@pytest.mark.parametrize("entry", ['[[5]]', '[[5, 1.5]]', '[[5, 0.5, 0.1, 0.1, 0.1, 0.1]]',
                                   '[[true, 0.5]]', '{"5": 0.5}'])
def test_bad_probabilities_are_one_line_errors(tmp_path, entry):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_tokens": 4, "drafts": [[4, true, 0.1], [5, false, 2.0]], '
                    f'"probs": {entry}}}\n')
    with pytest.raises(WanspecError, match="probs"):
        read_trace(path)


def test_an_accepted_position_gets_no_rank():
    req = TraceRequest(3)
    req.add(3, True, 0.1, None, 2)
    assert req.ranks == {}


def test_replay_puts_the_target_token_at_the_recorded_rank():
    t = Trace([_request()])
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), t, 0)
    assert [w.rank[p] for p in range(10, 18)] == [1, 2, 1, 3, 0, 1, 4, 2]
    for pos in (11, 13, 16, 17):
        assert w.alts[pos].index(w.target[pos]) == w.rank[pos] - 2
    assert w.target[14] not in w.alts[14]


def test_an_old_trace_replays_with_the_configured_rank_model():
    t = read_trace(SMALL)  # no ranks (written before they existed)
    assert t.rank_probs is None
    cfg = SimConfig(match="trace", requests=2, max_tokens=30_000, rank2=0.0, rank3=1.0,
                    rank4=0.0)
    w = replay_request(cfg, t, 0)
    assert {w.rank[p] for p in range(len(w.rank)) if not w.match[p]} == {3}
    # a trace that records ranks fills the unrecorded rejections with its own frequencies
    ranked = Trace([TraceRequest(4, {4: (False, 1.0)}, ranks={4: 4})])
    w = replay_request(cfg, ranked, 0)
    assert {w.rank[p] for p in range(len(w.rank)) if not w.match[p]} == {4}


@pytest.mark.parametrize("ranks, why", [
    ('{"x": 1}', "ranks must be a list"),
    ("[[5, 2, 1]]", "is not \\[position, rank\\]"),
    ("[[5, 1]]", "rank must be one of 0, 2, 3, 4"),
    ("[[5, true]]", "rank must be one of"),
    ("[[4, 2]]", "rank position 4 is not a rejected position"),  # accepted there
    ("[[9, 2]]", "rank position 9 is not a rejected position"),  # not in drafts
])
def test_bad_ranks_are_one_line_errors(tmp_path, ranks, why):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_tokens": 4, "drafts": [[4, true, 0.1], [5, false, 2.0]], '
                    f'"ranks": {ranks}}}\n')
    with pytest.raises(WanspecError, match=why):
        read_trace(path)


def test_a_replay_with_ranks_is_lossless():
    t = Trace([_request()])
    cfg = SimConfig(match="trace", requests=2, max_tokens=8, rtt_ms=60.0)
    for policy in ("remote", "always", "adaptive"):
        assert all(r.lossless for r in simulate_remote(cfg, policy, worlds(cfg, t)).requests)


def test_a_draft_off_the_prefix_where_none_was_recorded_reports_a_recorded_one():
    """A tree's branch from a wrong alternative can start at any position: after its wrong
    token the draft reports what the trace recorded after some miss."""
    req = TraceRequest(10, output_tokens=8)
    for pos in range(10, 18):
        req.add(pos, pos != 12, 0.1, 0.77 if pos == 12 else None, 0 if pos == 12 else None,
                None, (0.3, 0.2, 0.1) if pos == 12 else None)
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), Trace([req]), 0)
    assert all(w.entropy_bad[j] == 0.77 for j in range(1, len(w.entropy_bad)))
    assert all((w.top_bad[j], w.alt_p_bad[j]) == (0.3, (0.2, 0.1, 0.0))
               for j in range(1, len(w.top_bad)))
    # nothing recorded after a miss (an older trace): the entropy model, as before
    old = TraceRequest(10, {p: (True, 0.1) for p in range(10, 18)}, output_tokens=8)
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), Trace([old]), 0)
    assert len(set(w.entropy_bad)) > 5
