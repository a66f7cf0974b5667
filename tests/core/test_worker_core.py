"""WorkerCore, the worker's sans-I/O state machine, driven by hand (no models, no I/O)."""

from __future__ import annotations

import pytest

from wanspec.core.actions import DraftDone, Log, RunDraft, Send, Site
from wanspec.core.worker import (
    HELLO_TIMEOUT_S,
    Close,
    DraftFor,
    Release,
    WorkerCore,
    WorkerLimits,
)
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)
from wanspec.sampling import SamplingParams
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO

PROMPT = (5, 6, 7)


def new_core(**kw) -> WorkerCore:
    """A worker core whose connection has completed the handshake."""
    core = WorkerCore(WORKER_HELLO, **kw)
    assert core.on_message(CONTROLLER_HELLO, 0.0) == [Send(WORKER_HELLO)]
    return core


def start(core: WorkerCore, rid: int = 1, prompt=PROMPT, **kw) -> list:
    return core.on_message(SessionStart(rid=rid, prompt=tuple(prompt), **kw), 0.0)


def commit(core: WorkerCore, msg: Commit) -> list:
    return core.on_message(msg, 0.0)


def cancel(core: WorkerCore, msg: Cancel) -> list:
    return core.on_message(msg, 0.0)


def only_draft(actions) -> RunDraft:
    runs = [a for a in actions if isinstance(a, DraftFor)]
    assert len(runs) == 1, actions
    return runs[0].run


def sent(actions) -> list:
    return [a.msg for a in actions if isinstance(a, Send)]


def done(run: RunDraft, token: int, entropy: float = 0.5, top: float = 0.8) -> DraftDone:
    return DraftDone(run.op, token, entropy, top)


def test_start_prefills_and_drafts_the_first_position():
    core = new_core()
    actions = start(core, lookahead=3)
    assert len(actions) == 1 and isinstance(actions[0], DraftFor)
    fa = actions[0]
    assert fa.rid == 1
    assert fa.run.site is Site.WORKER
    assert (fa.run.start, fa.run.tokens) == (0, PROMPT)
    assert fa.run.position == 3
    assert core.stats.sessions == 1


def test_draft_done_streams_a_draft_and_continues():
    core = new_core()
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
    core = new_core()
    start(core, lookahead=3)
    msgs = drive_to_lookahead(core, [10, 11, 12])
    assert [(m.epoch, m.base, m.tokens) for m in msgs] == [(0, 3, (10,)), (0, 4, (11,)), (0, 5, (12,))]
    s = core.sessions[1]
    assert s.chain == [10, 11, 12]
    assert s.inflight is None  # stopped: the chain is as long as the lookahead
    assert core.stats.drafted == 3 and core.stats.passes == 3 and core.stats.wasted_passes == 0


def test_lookahead_is_capped_by_the_worker_and_at_least_one():
    core = new_core(limits=WorkerLimits(max_lookahead=2))
    start(core, lookahead=50)
    drive_to_lookahead(core, [10, 11])
    assert core.sessions[1].inflight is None and core.sessions[1].chain == [10, 11]

    core = new_core()
    start(core, lookahead=0)
    drive_to_lookahead(core, [10])
    assert core.sessions[1].inflight is None and core.sessions[1].chain == [10]


def test_commit_matching_the_chain_head_keeps_epoch_and_continues():
    core = new_core()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    out = commit(core, Commit(1, 0, 3, (10,)))
    s = core.sessions[1]
    assert s.epoch == 0 and s.rollbacks == 0 and core.stats.rollbacks == 0
    assert s.committed == [5, 6, 7, 10] and s.chain == [11, 12]
    run = only_draft(out)
    # the draft cache already holds 5 6 7 10 11: only 12 is fed
    assert (run.start, run.tokens, run.position) == (5, (12,), 6)
    out = core.on_draft_done(1, done(run, 13))
    assert sent(out) == [Drafts(1, 0, 6, (13,), (0.5,), (0.8,))]


def test_commit_of_the_whole_chain_keeps_epoch():
    core = new_core()
    start(core, lookahead=2)
    drive_to_lookahead(core, [10, 11])
    out = commit(core, Commit(1, 0, 3, (10, 11)))
    s = core.sessions[1]
    assert s.epoch == 0 and s.chain == [] and s.committed == [5, 6, 7, 10, 11]
    run = only_draft(out)
    assert (run.start, run.tokens, run.position) == (4, (11,), 5)


def test_commit_while_a_pass_is_in_flight_keeps_that_pass():
    core = new_core()
    start(core, lookahead=4)
    drive_to_lookahead(core, [10, 11])  # chain 10 11, pass for position 5 in flight
    inflight = core.sessions[1].inflight
    assert inflight is not None and inflight.position == 5
    assert commit(core, Commit(1, 0, 3, (10,))) == []  # one pass at a time
    out = core.on_draft_done(1, done(inflight, 12))
    assert sent(out) == [Drafts(1, 0, 5, (12,), (0.5,), (0.8,))]
    assert core.stats.wasted_passes == 0


def test_divergent_commit_rolls_back_under_a_new_epoch():
    core = new_core()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    s = core.sessions[1]
    assert s.cache_len == 5  # prompt + 10 + 11 fed; 12 not yet
    out = commit(core, Commit(1, 0, 3, (10, 99)))  # 11 was wrong: the target chose 99
    assert s.epoch == 1 and s.rollbacks == 1 and core.stats.rollbacks == 1
    assert s.chain == [] and s.committed == [5, 6, 7, 10, 99]
    run = only_draft(out)
    # cache cut back to the agreeing prefix (5 6 7 10), then the correction is fed
    assert (run.start, run.tokens, run.position) == (4, (99,), 5)
    out = core.on_draft_done(1, done(run, 20))
    assert sent(out) == [Drafts(1, 1, 5, (20,), (0.5,), (0.8,))]


def test_divergence_at_the_first_chain_token():
    core = new_core()
    start(core, lookahead=3)
    drive_to_lookahead(core, [10, 11, 12])
    out = commit(core, Commit(1, 0, 3, (42,)))
    s = core.sessions[1]
    assert s.epoch == 1 and s.chain == []
    run = only_draft(out)
    assert (run.start, run.tokens, run.position) == (3, (42,), 4)


def test_commit_running_past_the_chain_starts_a_new_epoch():
    core = new_core()
    start(core, lookahead=1)
    drive_to_lookahead(core, [10])
    out = commit(core, Commit(1, 0, 3, (10, 11)))  # agrees, then goes beyond the chain
    s = core.sessions[1]
    assert s.epoch == 1 and s.chain == [] and s.committed == [5, 6, 7, 10, 11]
    run = only_draft(out)
    # the cache holds only the prompt: both committed tokens are fed in one catch-up pass
    assert (run.start, run.tokens, run.position) == (3, (10, 11), 5)


def test_stale_in_flight_result_is_dropped_and_counted_wasted():
    core = new_core()
    start(core, lookahead=4)
    drive_to_lookahead(core, [10, 11])
    s = core.sessions[1]
    stale = s.inflight
    assert stale is not None and stale.position == 5
    assert s.cache_len == 5
    assert commit(core, Commit(1, 0, 3, (77,))) == []  # rollback, but a pass is in flight
    assert s.epoch == 1 and s.cache_len == 3
    out = core.on_draft_done(1, done(stale, 12))
    assert sent(out) == []  # its result belongs to the dead chain
    assert core.stats.wasted_passes == 1 and s.wasted == 1 and s.passes == 3
    run = only_draft(out)  # and drafting restarts from the committed prefix
    assert (run.start, run.tokens, run.position) == (3, (77,), 4)
    out = core.on_draft_done(1, done(run, 30))
    assert sent(out) == [Drafts(1, 1, 4, (30,), (0.5,), (0.8,))]


def test_result_with_unknown_op_or_session_is_wasted():
    core = new_core()
    run = only_draft(start(core))
    assert core.on_draft_done(1, DraftDone(run.op + 100, 1, 0.0, 1.0)) == []
    assert core.on_draft_done(99, DraftDone(run.op, 1, 0.0, 1.0)) == []
    assert core.stats.wasted_passes == 2
    # the real result is still accepted
    assert sent(core.on_draft_done(1, done(run, 10)))


def test_max_position_is_respected():
    core = new_core()
    start(core, lookahead=8, max_position=5)  # prompt of 3: positions 3 and 4 only
    msgs = drive_to_lookahead(core, [10, 11])
    assert [m.base for m in msgs] == [3, 4]
    assert core.sessions[1].inflight is None
    # committing does not unlock positions past the limit
    assert commit(core, Commit(1, 0, 3, (10,))) == []


def test_max_context_is_respected():
    core = new_core(max_context=4)
    start(core, lookahead=8)
    drive_to_lookahead(core, [10])
    assert core.sessions[1].inflight is None
    (refused,) = start(core, rid=2, prompt=(1, 2, 3, 4, 5))
    assert refused == Send(Error("prompt of 5 tokens exceeds the limit of 4", rid=2, code="session"))


def test_cancel_releases_and_reports_session_stats():
    core = new_core()
    start(core, lookahead=2)
    drive_to_lookahead(core, [10, 11])
    commit(core, Commit(1, 0, 3, (10, 12)))  # rollback; pass for position 5 in flight
    pending = core.sessions[1].inflight
    out = cancel(core, Cancel(1))
    assert out == [Release(1), Send(SessionStats(1, 2, 2, 0, 1))]
    assert 1 not in core.sessions
    # the pass that was in flight comes back after the cancel: dropped, wasted
    assert core.on_draft_done(1, done(pending, 13)) == []
    assert core.stats.wasted_passes == 1
    # further messages for the session are ignored
    assert commit(core, Commit(1, 1, 5, (1,))) == []
    assert cancel(core, Cancel(1)) == []


def test_sessions_are_independent():
    core = new_core()
    r1 = only_draft(start(core, rid=1, lookahead=2))
    r2 = only_draft(start(core, rid=2, prompt=(9,), lookahead=2))
    assert r1.op != r2.op
    out2 = core.on_draft_done(2, done(r2, 50))
    assert sent(out2) == [Drafts(2, 0, 1, (50,), (0.5,), (0.8,))]
    out1 = core.on_draft_done(1, done(r1, 10))
    assert sent(out1) == [Drafts(1, 0, 3, (10,), (0.5,), (0.8,))]
    commit(core, Commit(2, 0, 1, (51,)))
    assert core.sessions[2].epoch == 1 and core.sessions[1].epoch == 0


def test_bad_requests_are_refused_with_an_error_for_that_session():
    core = new_core(limits=WorkerLimits(max_connection_sessions=1))
    start(core, rid=1)
    assert start(core, rid=1) == [Send(Error("session 1 already exists", rid=1, code="session"))]
    (limit,) = start(core, rid=2)
    assert isinstance(limit.msg, Error) and "limit" in limit.msg.message
    (empty,) = new_core().on_message(SessionStart(rid=3, prompt=()), 0.0)
    assert empty.msg == Error("empty prompt", rid=3, code="session")
    (bad,) = new_core().on_message(SessionStart(rid=3, prompt=(1,), top_p=2.0), 0.0)
    assert bad.msg.rid == 3 and "top-p" in bad.msg.message
    # a commit not contiguous with the committed prefix: refused and the session dropped
    out = commit(core, Commit(1, 0, 4, (1,)))
    assert out == [Send(Error("session 1: commit at 4, expected 3", rid=1, code="session")),
                   Release(1)]
    assert core.sessions == {}


def test_connection_loss_frees_every_session():
    core = new_core()
    start(core, rid=1)
    start(core, rid=2)
    assert core.on_connection_lost() == [Release(1), Release(2)]
    assert core.sessions == {} and core.on_message(Ping(1.0, 1), 1.0) == []


def test_draft_passes_carry_the_session_sampling():
    core = new_core()
    (fa,) = start(core, temperature=0.8, top_p=0.9, top_k=5, seed=3)
    assert fa.sampling == SamplingParams(0.8, 5, 0.9, 3)


# ---- the connection's handshake -------------------------------------------------------------


def test_hello_is_answered_with_ours():
    core = WorkerCore(WORKER_HELLO)
    assert core.next_timer() == HELLO_TIMEOUT_S
    assert core.on_message(CONTROLLER_HELLO, 0.1) == [Send(WORKER_HELLO)]
    assert core.peer == CONTROLLER_HELLO
    assert core.next_timer() == 0.1 + WorkerLimits().idle_timeout_s  # now: the idle timeout


def test_anything_before_hello_closes_the_connection():
    core = WorkerCore(WORKER_HELLO)
    out = core.on_message(SessionStart(rid=1, prompt=(1,)), 0.0)
    assert isinstance(out[0], Log)
    assert out[1:] == [Send(Error("expected Hello first", code="handshake")),
                       Close("expected Hello first")]
    assert core.closed and core.on_message(CONTROLLER_HELLO, 0.1) == []


@pytest.mark.parametrize("hello, reason", [
    (Hello(99, "controller", tokenizer="0" * 16), "protocol version mismatch"),
    (Hello(PROTOCOL_VERSION, "controller", tokenizer="f" * 16), "tokenizer mismatch"),
])
def test_incompatible_controllers_are_refused(hello, reason):
    out = WorkerCore(WORKER_HELLO).on_message(hello, 0.0)
    sends = [a.msg for a in out if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].code == "handshake" and reason in sends[0].message
    assert isinstance(out[-1], Close)


def test_a_silent_peer_is_dropped_at_the_hello_deadline():
    core = WorkerCore(WORKER_HELLO, now=5.0)
    assert core.on_timer(5.0 + HELLO_TIMEOUT_S - 0.1) == []
    out = core.on_timer(5.0 + HELLO_TIMEOUT_S)
    assert isinstance(out[-1], Close) and core.closed


def test_pings_are_answered_and_controller_errors_logged():
    core = new_core()
    assert core.on_message(Ping(1.5, 7), 2.0) == [Send(Pong(1.5, 7))]
    (log,) = core.on_message(Error("something odd"), 2.0)
    assert isinstance(log, Log) and "something odd" in log.message


def test_worker_only_messages_from_the_controller_close_the_connection():
    core = new_core()
    out = core.on_message(Drafts(1, 0, 3, (1,)), 0.0)
    assert isinstance(out[-1], Close) and core.closed


def test_a_commit_past_the_session_end_is_refused_and_the_session_dropped():
    """The controller announced where the request ends; committing past it would grow the
    session's memory without bound: an Error for the session, its KV cache released."""
    core = new_core()
    start(core, lookahead=3, max_position=len(PROMPT) + 4)
    out = commit(core, Commit(1, 0, 3, (10, 11, 12, 13)))  # up to the end: fine
    assert 1 in core.sessions
    out = commit(core, Commit(1, 0, 7, (14,)))
    errors = [m for m in sent(out) if isinstance(m, Error)]
    assert errors and errors[0].rid == 1 and "past position" in errors[0].message
    assert 1 not in core.sessions and Release(1) in out
