"""The worker's load in its core: lookahead caps over capacity, waking up, the load in Pongs."""

from __future__ import annotations

import pytest

from wanspec.core.actions import DraftDone, Log, Send
from wanspec.core.worker import DraftFor, Release, WorkerCore, WorkerLoad
from wanspec.protocol.messages import Drafts, Error, Ping, Pong, SessionStart
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO


def new_core(load: WorkerLoad) -> WorkerCore:
    core = WorkerCore(WORKER_HELLO, load=load)
    assert core.on_message(CONTROLLER_HELLO, 0.0) == [Send(WORKER_HELLO)]
    return core


def draft_all(core: WorkerCore, token: int = 10) -> int:
    """Answer every pass in flight, and the passes they start, until none is left; how many."""
    n = 0
    while True:
        runs = [(rid, s.inflight) for rid, s in core.sessions.items() if s.inflight is not None]
        if not runs:
            return n
        for rid, run in runs:
            core.on_draft_done(rid, DraftDone(run.op, token, 0.5, 0.5))
            n += 1


# ---- the core applies it ------------------------------------------------------------------------


def test_over_capacity_sessions_stop_at_the_shrunk_cap_and_resume_when_the_load_falls():
    load = WorkerLoad(max_batch=2, sessions=6)  # six sessions of several connections, two per pass
    a, b = new_core(load), new_core(load)
    for rid in (1, 2, 3):
        a.on_message(SessionStart(rid, (5, 6, 7), lookahead=9), 0.0)
        b.on_message(SessionStart(rid, (1, 2), lookahead=9), 0.0)
    assert draft_all(a) == 3 * 3 and draft_all(b) == 3 * 3  # 9 * 2 // 6 each
    assert all(len(s.chain) == 3 for s in a.sessions.values())
    assert a.on_load_changed() == []  # nothing changed: nothing to start

    load.sessions = 3  # some sessions left (the adapter counted): 9 * 2 // 3 = 6
    woken = a.on_load_changed()
    assert sorted(x.rid for x in woken) == [1, 2, 3] and all(isinstance(x, DraftFor) for x in woken)
    assert draft_all(a) == 3 * 3
    assert all(len(s.chain) == 6 for s in a.sessions.values())

    load.sessions = 2  # within capacity: each session's own lookahead
    a.on_load_changed()
    draft_all(a)
    assert all(len(s.chain) == 9 for s in a.sessions.values())


def test_a_shrinking_cap_keeps_the_chain_already_drafted():
    load = WorkerLoad(max_batch=1, sessions=1)
    core = new_core(load)
    core.on_message(SessionStart(1, (5, 6), lookahead=4), 0.0)
    draft_all(core)
    load.sessions = 4  # 4 * 1 // 4 = 1
    assert core.on_load_changed() == []
    assert core.sessions[1].chain == [10, 10, 10, 10] and core.sessions[1].epoch == 0


def test_load_changes_before_the_handshake_or_after_close_start_nothing():
    load = WorkerLoad(max_batch=2)
    assert WorkerCore(WORKER_HELLO, load=load).on_load_changed() == []
    core = new_core(load)
    core.on_message(SessionStart(1, (5,), lookahead=2), 0.0)
    core.on_connection_lost()
    assert core.on_load_changed() == []


def test_pongs_report_the_load_within_the_wire_ranges():
    load = WorkerLoad(max_batch=4, sessions=6, busy=0.25)
    core = new_core(load)
    assert core.on_message(Ping(1.5, 7), 2.0) == [Send(Pong(1.5, 7, 0.25, 1.5))]
    load.busy = 1.3  # a pass counted at its end can overshoot
    assert core.on_message(Ping(1.5, 8), 2.0) == [Send(Pong(1.5, 8, 1.0, 1.5))]
    load.busy = float("nan")
    assert core.on_message(Ping(1.5, 9), 2.0) == [Send(Pong(1.5, 9, 0.0, 1.5))]
    # a core without a shared load (the simulator's) reports an idle, unlimited worker
    assert new_core(WorkerLoad()).on_message(Ping(1.0, 1), 1.0) == [Send(Pong(1.0, 1, 0.0, 0.0))]


def test_a_failed_pass_ends_its_session_with_an_error():
    core = new_core(WorkerLoad())
    (fa,) = core.on_message(SessionStart(1, (5, 6), lookahead=3), 0.0)
    core.on_message(SessionStart(2, (7,), lookahead=3), 0.0)
    assert core.on_draft_failed(1, fa.run.op + 99, "boom") == []  # not its pass: ignored
    out = core.on_draft_failed(1, fa.run.op, "ValueError")
    assert isinstance(out[0], Log)
    assert out[1:] == [Send(Error("session 1: draft pass failed: ValueError", rid=1,
                                  code="session")), Release(1)]
    assert 1 not in core.sessions and 2 in core.sessions
    assert core.on_draft_done(1, DraftDone(fa.run.op, 3, 0.1, 0.9)) == []  # late: wasted
    run2 = core.sessions[2].inflight
    out = core.on_draft_done(2, DraftDone(run2.op, 4, 0.1, 0.9))
    assert [a.msg for a in out if isinstance(a, Send)] == [Drafts(2, 0, 1, (4,), (0.1,), (0.9,))]


@pytest.mark.parametrize("sessions, expect", [(2, 4), (3, 2), (8, 1)])
def test_one_core_counts_towards_the_shared_load_like_any_other(sessions, expect):
    """The cap depends on all sessions of the worker, not on this connection's."""
    load = WorkerLoad(max_batch=2, sessions=sessions)
    core = new_core(load)
    core.on_message(SessionStart(1, (5, 6), lookahead=4), 0.0)
    assert draft_all(core) == expect
