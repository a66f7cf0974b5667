"""WorkerCore, the worker's sans-I/O state machine, driven by hand (no models, no I/O)."""

from __future__ import annotations

import pytest

from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.worker import DraftFor, Release, Send, WorkerCore
from wanspec.protocol.messages import Cancel, Commit, Drafts, SessionStart, SessionStats

PROMPT = (5, 6, 7)


def start(core: WorkerCore, rid: int = 1, prompt=PROMPT, **kw) -> list:
    return core.on_start(SessionStart(rid=rid, prompt=tuple(prompt), **kw))


def only_draft(actions) -> RunDraft:
    runs = [a for a in actions if isinstance(a, DraftFor)]
    assert len(runs) == 1, actions
    return runs[0].run


def sent(actions) -> list:
    return [a.msg for a in actions if isinstance(a, Send)]


def done(run: RunDraft, token: int, entropy: float = 0.5, top: float = 0.8) -> DraftDone:
    return DraftDone(run.op, token, entropy, top)


def test_start_prefills_and_drafts_the_first_position():
    core = WorkerCore()
    actions = start(core, lookahead=3)
    assert len(actions) == 1 and isinstance(actions[0], DraftFor)
    fa = actions[0]
    assert fa.rid == 1
    assert fa.run.site is Site.WORKER
    assert (fa.run.start, fa.run.tokens) == (0, PROMPT)
    assert fa.run.position == 3
    assert core.stats.sessions == 1


def test_draft_done_streams_a_draft_and_continues():
    core = WorkerCore()
    run = only_draft(start(core, lookahead=3))
    out = core.on_draft_done(1, done(run, 10, 0.25, 0.9))
    assert sent(out) == [Drafts(1, 0, 3, (10,), (0.25,), (0.9,))]
    nxt = only_draft(out)
    assert (nxt.start, nxt.tokens, nxt.position) == (3, (10,), 4)
    assert nxt.op != run.op
    # the Send comes before the next pass is started
    assert isinstance(out[0], Send)


def drive_to_lookahead(core: WorkerCore, tokens, rid: int = 1) -> list[Drafts]:
    """Answer each draft pass with the next of ``tokens``; returns the Drafts sent."""
    msgs: list[Drafts] = []
    session = core.sessions[rid]
    for tok in tokens:
        run = session.inflight
        assert run is not None
        out = core.on_draft_done(rid, done(run, tok))
        msgs += sent(out)
    return msgs


def test_drafts_ahead_up_to_lookahead_and_stops():
    core = WorkerCore()
    start(core, lookahead=3)
    msgs = drive_to_lookahead(core, [10, 11, 12])
    assert [(m.epoch, m.base, m.tokens) for m in msgs] == [(0, 3, (10,)), (0, 4, (11,)), (0, 5, (12,))]
    s = core.sessions[1]
    assert s.chain == [10, 11, 12]
    assert s.inflight is None  # stopped: the chain is as long as the lookahead
    assert core.stats.drafted == 3 and core.stats.passes == 3 and core.stats.wasted_passes == 0


def test_lookahead_is_capped_by_the_worker_and_at_least_one():
    core = WorkerCore(max_lookahead=2)
    start(core, lookahead=50)
    drive_to_lookahead(core, [10, 11])
    assert core.sessions[1].inflight is None and core.sessions[1].chain == [10, 11]

    core = WorkerCore()
    start(core, lookahead=0)
    drive_to_lookahead(core, [10])
    assert core.sessions[1].inflight is None and core.sessions[1].chain == [10]


def test_commit_matching_the_chain_head_keeps_epoch_and_continues():
    core = WorkerCore()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    out = core.on_commit(Commit(1, 0, 3, (10,)))
    s = core.sessions[1]
    assert s.epoch == 0 and s.rollbacks == 0 and core.stats.rollbacks == 0
    assert s.committed == [5, 6, 7, 10] and s.chain == [11, 12]
    run = only_draft(out)
    # the draft cache already holds 5 6 7 10 11: only 12 is fed
    assert (run.start, run.tokens, run.position) == (5, (12,), 6)
    out = core.on_draft_done(1, done(run, 13))
    assert sent(out) == [Drafts(1, 0, 6, (13,), (0.5,), (0.8,))]


def test_commit_of_the_whole_chain_keeps_epoch():
    core = WorkerCore()
    start(core, lookahead=2)
    drive_to_lookahead(core, [10, 11])
    out = core.on_commit(Commit(1, 0, 3, (10, 11)))
    s = core.sessions[1]
    assert s.epoch == 0 and s.chain == [] and s.committed == [5, 6, 7, 10, 11]
    run = only_draft(out)
    assert (run.start, run.tokens, run.position) == (4, (11,), 5)


def test_commit_while_a_pass_is_in_flight_keeps_that_pass():
    core = WorkerCore()
    start(core, lookahead=4)
    drive_to_lookahead(core, [10, 11])  # chain 10 11, pass for position 5 in flight
    inflight = core.sessions[1].inflight
    assert inflight is not None and inflight.position == 5
    assert core.on_commit(Commit(1, 0, 3, (10,))) == []  # one pass at a time
    out = core.on_draft_done(1, done(inflight, 12))
    assert sent(out) == [Drafts(1, 0, 5, (12,), (0.5,), (0.8,))]
    assert core.stats.wasted_passes == 0


def test_divergent_commit_rolls_back_under_a_new_epoch():
    core = WorkerCore()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    s = core.sessions[1]
    assert s.cache_len == 5  # prompt + 10 + 11 fed; 12 not yet
    out = core.on_commit(Commit(1, 0, 3, (10, 99)))  # 11 was wrong: the target chose 99
    assert s.epoch == 1 and s.rollbacks == 1 and core.stats.rollbacks == 1
    assert s.chain == [] and s.committed == [5, 6, 7, 10, 99]
    run = only_draft(out)
    # cache cut back to the agreeing prefix (5 6 7 10), then the correction is fed
    assert (run.start, run.tokens, run.position) == (4, (99,), 5)
    out = core.on_draft_done(1, done(run, 20))
    assert sent(out) == [Drafts(1, 1, 5, (20,), (0.5,), (0.8,))]


def test_divergence_at_the_first_chain_token():
    core = WorkerCore()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    out = core.on_commit(Commit(1, 0, 3, (42,)))
    s = core.sessions[1]
    assert s.epoch == 1 and s.chain == []
    run = only_draft(out)
    assert (run.start, run.tokens, run.position) == (3, (42,), 4)


def test_commit_running_past_the_chain_starts_a_new_epoch():
    core = WorkerCore()
    start(core, lookahead=1)
    drive_to_lookahead(core, [10])
    out = core.on_commit(Commit(1, 0, 3, (10, 11)))  # agrees, then goes beyond the chain
    s = core.sessions[1]
    assert s.epoch == 1 and s.chain == [] and s.committed == [5, 6, 7, 10, 11]
    run = only_draft(out)
    # the cache holds only the prompt: both committed tokens are fed in one catch-up pass
    assert (run.start, run.tokens, run.position) == (3, (10, 11), 5)


def test_stale_in_flight_result_is_dropped_and_counted_wasted():
    core = WorkerCore()
    start(core, lookahead=4)
    drive_to_lookahead(core, [10, 11])
    s = core.sessions[1]
    stale = s.inflight
    assert stale is not None and stale.position == 5
    assert s.cache_len == 5
    assert core.on_commit(Commit(1, 0, 3, (77,))) == []  # rollback, but a pass is in flight
    assert s.epoch == 1 and s.cache_len == 3
    out = core.on_draft_done(1, done(stale, 12))
    assert sent(out) == []  # its result belongs to the dead chain
    assert core.stats.wasted_passes == 1 and s.wasted == 1 and s.passes == 3
    run = only_draft(out)  # and drafting restarts from the committed prefix
    assert (run.start, run.tokens, run.position) == (3, (77,), 4)
    out = core.on_draft_done(1, done(run, 30))
    assert sent(out) == [Drafts(1, 1, 4, (30,), (0.5,), (0.8,))]


def test_result_with_unknown_op_or_session_is_wasted():
    core = WorkerCore()
    run = only_draft(start(core))
    assert core.on_draft_done(1, DraftDone(run.op + 100, 1, 0.0, 1.0)) == []
    assert core.on_draft_done(99, DraftDone(run.op, 1, 0.0, 1.0)) == []
    assert core.stats.wasted_passes == 2
    # the real result is still accepted
    assert sent(core.on_draft_done(1, done(run, 10)))


def test_max_position_is_respected():
    core = WorkerCore()
    start(core, lookahead=8, max_position=5)  # prompt of 3: positions 3 and 4 only
    msgs = drive_to_lookahead(core, [10, 11])
    assert [m.base for m in msgs] == [3, 4]
    assert core.sessions[1].inflight is None
    # committing does not unlock positions past the limit
    assert core.on_commit(Commit(1, 0, 3, (10,))) == []


def test_max_context_is_respected():
    core = WorkerCore(max_context=4)
    start(core, lookahead=8)
    drive_to_lookahead(core, [10])
    assert core.sessions[1].inflight is None
    with pytest.raises(ValueError):
        start(core, rid=2, prompt=(1, 2, 3, 4, 5))


def test_cancel_releases_and_reports_session_stats():
    core = WorkerCore()
    start(core, lookahead=2)
    drive_to_lookahead(core, [10, 11])
    core.on_commit(Commit(1, 0, 3, (10, 12)))  # rollback; pass for position 5 in flight
    pending = core.sessions[1].inflight
    out = core.on_cancel(Cancel(1))
    assert out == [Release(1), Send(SessionStats(1, 2, 2, 0, 1))]
    assert 1 not in core.sessions
    # the pass that was in flight comes back after the cancel: dropped, wasted
    assert core.on_draft_done(1, done(pending, 13)) == []
    assert core.stats.wasted_passes == 1
    # further messages for the session are ignored
    assert core.on_commit(Commit(1, 1, 5, (1,))) == []
    assert core.on_cancel(Cancel(1)) == []


def test_sessions_are_independent():
    core = WorkerCore()
    r1 = only_draft(start(core, rid=1, lookahead=2))
    r2 = only_draft(start(core, rid=2, prompt=(9,), lookahead=2))
    assert r1.op != r2.op
    out2 = core.on_draft_done(2, done(r2, 50))
    assert sent(out2) == [Drafts(2, 0, 1, (50,), (0.5,), (0.8,))]
    out1 = core.on_draft_done(1, done(r1, 10))
    assert sent(out1) == [Drafts(1, 0, 3, (10,), (0.5,), (0.8,))]
    core.on_commit(Commit(2, 0, 1, (51,)))
    assert core.sessions[2].epoch == 1 and core.sessions[1].epoch == 0


def test_bad_requests_raise_value_error():
    core = WorkerCore(max_sessions=1)
    start(core, rid=1)
    with pytest.raises(ValueError, match="already exists"):
        start(core, rid=1)
    with pytest.raises(ValueError, match="limit"):
        start(core, rid=2)
    with pytest.raises(ValueError, match="empty"):
        WorkerCore().on_start(SessionStart(rid=3, prompt=()))
    with pytest.raises(ValueError, match="expected 3"):
        core.on_commit(Commit(1, 0, 4, (1,)))  # not contiguous with the committed prefix


def test_drop_frees_the_session():
    core = WorkerCore()
    start(core)
    assert core.drop(1) == [Release(1)]
    assert core.drop(1) == []
    assert core.sessions == {}
