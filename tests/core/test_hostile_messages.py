"""The controller's state machines against a hostile worker's messages, driven by hand.

What the hostile-worker suite (tests/runtime/test_hostile_worker.py) found, pinned at the core:
Pongs that echo no Ping of ours fed the link's RTT estimate; a worker could send stale drafts
without end, each one processed, faster than the request could take its own pass results; and
the adaptive policy waited without end for a worker that had gone silent.
"""

from __future__ import annotations

import pytest

from wanspec.core.actions import DraftDone, Log, RunDraft, RunTarget, Send, TargetDone
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.link import LinkCore, Up
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.protocol.messages import Drafts, Ping, Pong
from wanspec.sampling import SamplingParams
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO


def connected(now: float = 1.0) -> LinkCore:
    link = LinkCore(CONTROLLER_HELLO, ping_interval_s=1.0)
    link.connect(now)
    assert link.on_message(WORKER_HELLO, now + 0.04) == [Up()]
    return link


def test_pongs_that_echo_no_ping_of_ours_teach_nothing():
    link = connected()
    rtt = link.rtt.get
    (ping,) = link.on_timer(2.04)
    assert isinstance(ping, Send) and isinstance(ping.msg, Ping)
    for lie in (Pong(-1e300, ping.msg.seq), Pong(ping.msg.t - 5, ping.msg.seq),
                Pong(ping.msg.t, ping.msg.seq + 1), Pong(0.0, 0)):
        assert link.on_message(lie, 2.1) == []
        assert link.rtt.get == rtt
    assert link.on_message(Pong(ping.msg.t, ping.msg.seq), 2.1) == []  # the true echo
    assert link.rtt.get == pytest.approx(0.8 * rtt + 0.2 * (2.1 - 2.04))
    assert link.on_message(Pong(ping.msg.t, ping.msg.seq), 2.5) == []  # echoed twice: once
    assert link.rtt.samples == 2
    assert link.worker_load is not None  # the load report is still taken (the codec checked it)


def test_a_worker_is_dropped_once_it_sends_more_drafts_than_an_honest_one_could():
    """An honest worker sends one Drafts per draft pass, and drafts at most its lookahead past
    what we committed (a new chain after each commit at most): a flood of stale or misplaced
    drafts beyond that is a worker making us work for nothing."""
    est = Estimates.with_priors(rtt_s=0.05, target_s=0.1, draft_s=0.02)
    core = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(gamma=3, lookahead=4,
                                           policy=PolicyConfig(PolicyName.REMOTE)),
                          has_local_draft=False, estimates=est, vocab_size=100)
    core.start(0.0)
    assert core.on_message(Drafts(7, 5, 3, (1,)), 0.1) == []  # a live chain (busy: no action)
    sent = 1
    while core.worker_ok:
        sent += 1
        actions = core.on_message(Drafts(7, 1, 3, (2,)), 0.1)  # stale: dropped, but counted
        assert sent < 1000, "never dropped"
    assert any(isinstance(a, Log) and "more Drafts" in a.message for a in actions)
    assert core.stats.worker_lost and sent > 2 * 4  # not before an honest worker's allowance


@pytest.mark.parametrize("has_local", [False, True], ids=["no-local-draft", "local-draft"])
def test_adaptive_waits_for_a_silent_worker_are_bounded(has_local):
    """A worker that completed the handshake and then says nothing (stalled, or hostile): the
    adaptive policy waited for its 'overdue' drafts again and again, each wait ending just
    before the next expected draft, while no event ever changed its estimates -- a request that
    never finished.  Drafts overdue by several round trips are no longer expected."""
    est = Estimates.with_priors(rtt_s=0.05, target_s=0.03, draft_s=0.002)
    for _ in range(200):  # drafts have been right so far: waiting for them looks worth it
        est.acceptance.update(True, True)
    core = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=12), SamplingParams(),
                          ControllerConfig(policy=PolicyConfig(PolicyName.ADAPTIVE)),
                          has_local_draft=has_local, estimates=est, vocab_size=100)
    now, timers = 0.0, 0
    actions = core.start(now)
    while not core.finished:
        passes = [a for a in actions if isinstance(a, (RunTarget, RunDraft))]
        if passes:
            (run,) = passes
            now += 0.03 if isinstance(run, RunTarget) else 0.002
            done = (TargetDone(run.op, (5,) * run.want) if isinstance(run, RunTarget)
                    else DraftDone(run.op, 5, 0.1, 0.9))
            actions = core.on_event(done, now)
            continue
        deadline = core.next_timer()
        assert deadline is not None, "idle with nothing to wait for"
        now = max(now, deadline)
        timers += 1
        assert timers < 1000, f"still waiting for the worker at t={now:.3f} s"
        actions = core.on_timer(now)
    assert core.transcript.output == [5] * 12
    assert now < 2.0  # (12 tokens of 30 ms, and waits of a few round trips at most)


@pytest.mark.parametrize("bad", [
    Drafts(7, 0, 4, (9, 8), lane=1, parent=0, fork=4),  # its parent's own token at its fork
    Drafts(7, 0, 9, (9, 8), lane=1, parent=0, fork=9),  # a fork past what the main line drafted
    Drafts(7, 0, 4, (5, 8), lane=1, parent=3, fork=4),  # off a lane that never existed
    Drafts(7, 1, 4, (5, 8), lane=2, parent=0, fork=4),  # a new epoch that starts with a branch
], ids=["parents-token", "fork-outside", "unknown-parent", "epoch-starts-with-branch"])
def test_a_worker_sending_a_malformed_draft_tree_is_dropped(bad):
    core = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(gamma=3, lookahead=4, branches=2,
                                           policy=PolicyConfig(PolicyName.REMOTE)),
                          has_local_draft=False, vocab_size=100)
    core.start(0.0)
    core.on_message(Drafts(7, 0, 3, (8, 9)), 0.1)
    out = core.on_message(bad, 0.2)
    assert core.stats.worker_lost and "protocol error" in core.stats.worker_lost
    assert any(isinstance(a, Log) for a in out)


def test_a_worker_growing_more_lanes_than_the_session_allows_is_dropped():
    core = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                          ControllerConfig(gamma=3, lookahead=4, branches=1,
                                           policy=PolicyConfig(PolicyName.REMOTE)),
                          has_local_draft=False, vocab_size=100)
    core.start(0.0)
    core.on_message(Drafts(7, 0, 3, (8, 9, 10)), 0.1)
    core.on_message(Drafts(7, 0, 3, (20, 21), lane=1, parent=0, fork=3), 0.1)
    assert core.worker_ok
    core.on_message(Drafts(7, 0, 4, (30, 31), lane=2, parent=0, fork=4), 0.1)
    assert not core.worker_ok and "more than 2 lanes" in core.stats.worker_lost


def test_dropping_a_worker_cancels_its_session_unless_the_worker_or_link_ended_it():
    """We drop a worker whose link still works: its session is cancelled (it would hold a KV
    slot there until the connection closed).  A worker that refused the session, or a link that
    is gone, needs no Cancel."""
    from wanspec.core.actions import WorkerLost
    from wanspec.protocol.messages import Cancel, Error

    def core() -> ControllerCore:
        c = ControllerCore(7, [1, 2, 3], StopCriteria(max_tokens=8), SamplingParams(),
                           ControllerConfig(gamma=3, lookahead=4,
                                            policy=PolicyConfig(PolicyName.REMOTE)),
                           has_local_draft=False, vocab_size=100)
        c.start(0.0)
        return c

    lied = core().on_message(Drafts(7, 0, 3, (8, 500)), 0.1)  # out of the vocabulary
    assert Send(Cancel(7, "dropped")) in lied
    refused = core().on_message(Error("busy", rid=7, code="overloaded"), 0.1)
    gone = core().on_event(WorkerLost("connection closed"), 0.1)
    assert not any(isinstance(a, Send) and isinstance(a.msg, Cancel) for a in refused + gone)
