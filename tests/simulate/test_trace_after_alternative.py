"""Traces hold what the draft proposed going on from each of its wrong alternatives
(``after_alternative``); a replayed draft tree's branch from one reports those proposals."""

from __future__ import annotations

import json

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate.config import SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.models import DraftCache, RequestWorld
from wanspec.simulate.trace import (
    AFTER_ALTERNATIVE_DEPTH,
    Trace,
    TraceRequest,
    read_trace,
    replay_request,
    write_trace,
)
from wanspec.simulate.worlds import worlds

FROM_SECOND = [(1.5, 0.6, 0.2, 0.1, 0.05), (0.3, 0.9, 0.05)]  # after the 2nd choice at 14
FROM_FOURTH = [(2.5, 0.3, 0.2, 0.2, 0.1)]  # after the 4th choice at 14


def _request() -> TraceRequest:
    """Positions 10-17, the draft wrong at 12 only (the target's token its 3rd choice there)."""
    req = TraceRequest(10, output_tokens=8)
    for pos in range(10, 18):
        miss = pos == 12
        req.add(pos, not miss, 0.1, 0.42 if miss else None, 3 if miss else None)
    req.after_alternative[(14, 0)] = FROM_SECOND
    req.after_alternative[(14, 2)] = FROM_FOURTH
    req.after_alternative[(12, 0)] = [(0.7, 0.8)]
    return req


def _world():
    return replay_request(SimConfig(match="trace", requests=1, max_tokens=8),
                          Trace([_request()]), 0)


def test_the_proposals_after_alternatives_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [_request(), TraceRequest(4, {4: (False, 1.0)})])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[1]["after_alternative"] == [[12, 0, [0.7, 0.8]],
                                             [14, 0, [1.5, 0.6, 0.2, 0.1, 0.05], [0.3, 0.9, 0.05]],
                                             [14, 2, [2.5, 0.3, 0.2, 0.2, 0.1]]]
    assert "after_alternative" not in lines[2]  # nothing recorded: no field (older traces)
    t = read_trace(path)
    assert t.requests[0].after_alternative == _request().after_alternative
    assert t.requests[1].after_alternative == {}


def test_a_branch_from_a_wrong_alternative_reports_each_recorded_proposal_then_the_last():
    w = _world()
    target, second = w.target, w.alts[14][0]
    assert second != target[14]
    cache = DraftCache()
    token, e, top, _, alts = w.draft(cache, 0, (*target[:14], second))  # proposes for 15
    assert (e, top, alts) == (1.5, 0.6, (0.2, 0.1, 0.05)) and token != target[15]
    for pos in (16, 17):  # the recorded second proposal, then (past the end) the last one again
        token, e, top, alts_off, alts = w.draft(cache, pos - 1, (w.wrong[pos - 1],))
        assert (e, top, alts) == (0.3, 0.9, (0.05, 0.0, 0.0))
        assert token != target[pos] and target[pos] not in alts_off  # never the target's
    # a fork of the branch keeps going on from it; a fork cut before it is back on the prefix
    fork = DraftCache()
    fork.copy_from(cache, 16)
    assert w.draft(fork, 16, (w.wrong[16],))[1] == 0.3
    fork.copy_from(cache, 14)
    assert w.draft(fork, 14, (target[14],))[1] == 0.1
    # the 4th choice has its own record; the 3rd (no record) goes on as a miss would
    assert w.draft(DraftCache(), 0, (*target[:14], w.alts[14][2]))[1:3] == (2.5, 0.3)
    third = w.draft(DraftCache(), 0, (*target[:14], w.alts[14][1]))
    assert third[1] == w.entropy_bad[15]


def test_at_a_miss_the_target_token_is_on_the_prefix_and_the_others_have_their_records():
    w = _world()
    assert w.alts[12][1] == w.target[12]  # rank 3: the target's token is the 3rd choice
    assert w.draft(DraftCache(), 0, (*w.target[:12], w.alts[12][0]))[1] == 0.7
    on = w.draft(DraftCache(), 0, (*w.target[:12], w.alts[12][1]))
    assert on[0] == w.target[13] and on[1] == 0.1  # back on the committed prefix


def test_a_replay_with_proposals_after_alternatives_is_lossless(monkeypatch):
    """Long enough that the worker's branches from wrong alternatives report the recorded
    proposals (counted), and every output is still the target's."""
    req = TraceRequest(10, output_tokens=64)
    for pos in range(10, 74):
        miss = pos % 5 == 0
        req.add(pos, not miss, 1.0 if miss else 0.3, 0.8 if miss else None, 2 if miss else None)
        for i in range(3):
            if not (miss and i == 0):  # (at a miss the 2nd choice is the target's token)
                req.after_alternative[(pos, i)] = [(1.2, 0.5, 0.3, 0.1), (0.4, 0.8, 0.1)]
    hits = []
    draft = RequestWorld.draft

    def spy(world, cache, start, tokens):
        out = draft(world, cache, start, tokens)
        hits.append((cache.bad, cache.bad_token) in world.after_alt)
        return out

    monkeypatch.setattr(RequestWorld, "draft", spy)
    cfg = SimConfig(match="trace", requests=2, max_tokens=64, rtt_ms=60.0, branches=4)
    for policy in ("remote", "always", "entropy", "adaptive"):
        hits.clear()
        result = simulate_remote(cfg, policy, worlds(cfg, Trace([req])))
        assert all(r.lossless for r in result.requests)
        assert sum(hits) > 20, policy  # the recorded proposals were drafted


@pytest.mark.parametrize("entry, why", [
    ('{"12": []}', "must be a list"),
    ('[[11, 0]]', "is not \\[position"),
    ('[[9, 0, [0.5, 0.5]]]', "is not \\[position"),  # before the output
    ('[[11, 3, [0.5, 0.5]]]', "is not \\[position"),  # only three alternatives
    ('[[11, true, [0.5, 0.5]]]', "is not \\[position"),
    ('[[12, 0, [0.5, 0.5]]]', "not the target"),  # 12's 2nd choice is the target's token
    ('[[11, 0, ' + ", ".join(["[0.5, 0.5]"] * (AFTER_ALTERNATIVE_DEPTH + 1)) + ']]', "at most"),
    ('[[11, 0, [0.5]]]', "proposal"),
    ('[[11, 0, [0.5, 1.5]]]', "proposal"),
    ('[[11, 0, 0.5]]', "proposal"),
])
def test_bad_proposals_after_an_alternative_are_one_line_errors(tmp_path, entry, why):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt_tokens": 10, "drafts": [[11, true, 0.1], [12, false, 2.0, 0.4]], '
                    f'"ranks": [[12, 2]], "after_alternative": {entry}}}\n')
    with pytest.raises(WanspecError, match=why) as info:
        read_trace(path)
    assert "\n" not in str(info.value)
