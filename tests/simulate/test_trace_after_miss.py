"""Traces hold what the draft proposed as it went on past its own miss (``further_after_miss``);
a replayed draft off the committed prefix reports those proposals, step by step."""

from __future__ import annotations

import json

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate.config import SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.models import DraftCache
from wanspec.simulate.trace import (
    AFTER_MISS_DEPTH,
    Trace,
    TraceRequest,
    read_trace,
    replay_request,
    write_trace,
)
from wanspec.simulate.worlds import worlds

FURTHER = [(1.5, 0.6, 0.2, 0.1, 0.05), (0.3, 0.9, 0.05)]  # proposals at 14 and 15


def _request() -> TraceRequest:
    """Positions 10-17, the draft wrong at 12 only; after it: 0.42 at 13, then FURTHER."""
    req = TraceRequest(10, output_tokens=8)
    for pos in range(10, 18):
        miss = pos == 12
        req.add(pos, not miss, 0.1, 0.42 if miss else None, 0 if miss else None, None,
                (0.7, 0.1, 0.1) if miss else None, FURTHER if miss else ())
    return req


def test_the_proposals_after_a_miss_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [_request(), TraceRequest(4, {4: (False, 1.0)})])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[1]["further_after_miss"] == [[12, [1.5, 0.6, 0.2, 0.1, 0.05], [0.3, 0.9, 0.05]]]
    assert "further_after_miss" not in lines[2]  # nothing recorded: no field (older traces)
    t = read_trace(path)
    assert t.requests[0].further_after_miss == {12: FURTHER}
    assert t.requests[1].further_after_miss == {}


def test_a_draft_going_on_past_its_miss_reports_each_recorded_proposal_then_the_last():
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), Trace([_request()]), 0)
    cache, target = DraftCache(), w.target
    wrong = w.wrong[12]
    _, e, top, _, alts = w.draft(cache, 0, (*target[:12], wrong))  # proposes for 13
    assert (e, top, alts) == (0.42, 0.7, (0.1, 0.1, 0.0))
    chain = [wrong]
    for pos, (e_want, top_want, alts_want) in [(14, (1.5, 0.6, (0.2, 0.1, 0.05))),
                                              (15, (0.3, 0.9, (0.05, 0.0, 0.0))),
                                              (16, (0.3, 0.9, (0.05, 0.0, 0.0))),  # past the
                                              (17, (0.3, 0.9, (0.05, 0.0, 0.0)))]:  # end: last
        chain.append(w.wrong[pos - 1])
        token, e, top, alts_off, alts = w.draft(cache, pos - 1, (chain[-1],))
        assert (e, top, alts) == (e_want, top_want, alts_want)
        assert token != target[pos] and target[pos] not in alts_off  # never the target's
    # back on the committed prefix (a cut before the miss): the recorded on-prefix draft again
    assert w.draft(cache, 12, (target[12],))[1] == 0.1


def test_a_draft_off_the_prefix_where_none_was_recorded_goes_on_as_a_recorded_one():
    """A tree's branch from a wrong alternative at 15 (no miss recorded there): it reports the
    trace's only recorded miss, and what followed that."""
    w = replay_request(SimConfig(match="trace", requests=1, max_tokens=8), Trace([_request()]), 0)
    cache, target = DraftCache(), w.target
    assert w.draft(cache, 0, (*target[:15], w.alts_off[15][0]))[1] == 0.42
    assert w.draft(cache, 16, (w.wrong[16],))[1:3] == (1.5, 0.6)


def test_a_replay_with_proposals_after_misses_is_lossless():
    t = Trace([_request()])
    cfg = SimConfig(match="trace", requests=2, max_tokens=8, rtt_ms=60.0)
    for policy in ("remote", "always", "entropy", "adaptive"):
        assert all(r.lossless for r in simulate_remote(cfg, policy, worlds(cfg, t)).requests)


@pytest.mark.parametrize("entry, why", [
    ('{"12": []}', "must be a list"),
    ('[[12]]', "is not \\[position"),
    ('[[11, [0.5, 0.5]]]', "entropy after the miss"),  # 11 was accepted: no miss there
    ('[[true, [0.5, 0.5]]]', "is not \\[position"),
    ('[[12, ' + ", ".join(["[0.5, 0.5]"] * (AFTER_MISS_DEPTH + 1)) + ']]', "at most"),
    ('[[12, [0.5]]]', "proposal"),
    ('[[12, [-1, 0.5]]]', "proposal"),
    ('[[12, [0.5, 1.5]]]', "proposal"),
    ('[[12, [0.5, 0.5, 0.1, 0.1, 0.1, 0.1]]]', "proposal"),
    ('[[12, [0.5, "x"]]]', "proposal"),
    ('[[12, 0.5]]', "proposal"),
])
def test_bad_proposals_after_a_miss_are_one_line_errors(tmp_path, entry, why):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_tokens": 10, "drafts": [[11, true, 0.1], [12, false, 2.0, 0.4]], '
                    f'"further_after_miss": {entry}}}\n')
    with pytest.raises(WanspecError, match=why) as info:
        read_trace(path)
    assert "\n" not in str(info.value)
