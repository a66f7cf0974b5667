"""The worker's limits as decisions of its sans-I/O core (and the controller's link silence),
driven by hand: no sockets, no models."""

from __future__ import annotations

import pytest

from wanspec.core.actions import Log, Send
from wanspec.core.link import LinkCore, Lost
from wanspec.core.worker import (
    Admit,
    Close,
    DraftFor,
    Release,
    WorkerCore,
    WorkerLimits,
    WorkerLoad,
    admit_connection,
)
from wanspec.protocol.messages import Error, Ping, Pong, SessionStart
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO


def core_with(now: float = 0.0, load: WorkerLoad | None = None, **limits) -> WorkerCore:
    core = WorkerCore(WORKER_HELLO, now=now, limits=WorkerLimits(**limits), load=load)
    assert core.on_message(CONTROLLER_HELLO, now) == [Send(WORKER_HELLO)]
    return core


def errors(actions) -> list[Error]:
    return [a.msg for a in actions if isinstance(a, Send) and isinstance(a.msg, Error)]


def test_connections_are_served_then_refused_then_dropped():
    limits = WorkerLimits(max_connections=2)
    assert admit_connection(0, 0, limits) is Admit.SERVE
    assert admit_connection(1, 5, limits) is Admit.SERVE
    assert admit_connection(2, 0, limits) is Admit.REFUSE
    assert admit_connection(2, 1, limits) is Admit.REFUSE
    assert admit_connection(2, 2, limits) is Admit.DROP  # even the refusals are at their limit


def test_an_overloaded_connection_answers_its_hello_with_a_refusal():
    core = WorkerCore(WORKER_HELLO, limits=WorkerLimits(max_connections=3), overloaded=True)
    out = core.on_message(CONTROLLER_HELLO, 0.1)
    (error,) = errors(out)
    assert error.code == "overloaded" and error.rid == -1 and "limit of 3 connections" in error.message
    assert isinstance(out[-1], Close) and core.closed and core.peer is None


def test_sessions_are_capped_per_connection_and_across_connections():
    load = WorkerLoad()
    core = core_with(load=load, max_sessions=3, max_connection_sessions=2)
    assert isinstance(core.on_message(SessionStart(1, (1, 2)), 0.0)[0], DraftFor)
    load.sessions = 1  # (the adapter counts every connection's)
    core.on_message(SessionStart(2, (1, 2)), 0.0)
    load.sessions = 2
    (mine,) = errors(core.on_message(SessionStart(3, (1, 2)), 0.0))
    assert mine.code == "overloaded" and mine.rid == 3 and "this connection" in mine.message
    other = core_with(load=load, max_sessions=3, max_connection_sessions=2)
    other.on_message(SessionStart(1, (1, 2)), 0.0)
    load.sessions = 3  # the worker is full: a third connection's first session is refused
    (full,) = errors(core_with(load=load, max_sessions=3).on_message(SessionStart(9, (1,)), 0.0))
    assert full.code == "overloaded" and "limit of 3 sessions" in full.message
    assert set(core.sessions) == {1, 2}  # refused sessions leave nothing behind


def test_prompt_length_is_capped():
    core = core_with(max_prompt=4)
    assert isinstance(core.on_message(SessionStart(1, (1, 2, 3, 4)), 0.0)[0], DraftFor)
    (error,) = errors(core.on_message(SessionStart(2, (1, 2, 3, 4, 5)), 0.0))
    assert error.code == "session" and "limit of 4" in error.message
    assert set(core.sessions) == {1}


def test_a_connection_silent_for_the_idle_timeout_is_closed():
    core = core_with(now=1.0, idle_timeout_s=5.0)
    core.on_message(SessionStart(1, (1, 2)), 1.0)
    assert core.next_timer() == 6.0
    assert core.on_message(Ping(2.0, 1), 3.0) == [Send(Pong(2.0, 1))]  # anything counts
    assert core.next_timer() == 8.0
    assert core.on_timer(7.9) == []
    out = core.on_timer(8.0)
    (error,) = errors(out)
    assert error.code == "idle" and error.rid == -1
    assert Release(1) in out and isinstance(next(a for a in out if isinstance(a, Close)), Close)
    assert core.closed and core.sessions == {} and core.next_timer() is None
    assert any(isinstance(a, Log) for a in out)


def test_no_idle_timeout_when_it_is_zero():
    assert core_with(idle_timeout_s=0.0).next_timer() is None


def test_the_hello_timeout_is_a_limit():
    core = WorkerCore(WORKER_HELLO, now=2.0, limits=WorkerLimits(hello_timeout_s=0.5))
    assert core.next_timer() == 2.5
    assert isinstance(core.on_timer(2.5)[-1], Close)


@pytest.mark.parametrize("answers", [True, False])
def test_the_controller_loses_a_worker_that_sends_nothing(answers):
    link = LinkCore(CONTROLLER_HELLO, ping_interval_s=1.0, silence_timeout_s=3.0)
    link.connect(0.0)
    link.on_message(WORKER_HELLO, 0.05)
    now, lost = 0.05, None
    while now < 10.0 and lost is None:
        now = link.next_timer()
        for a in link.on_timer(now):
            if isinstance(a, Lost):
                lost = (now, a.reason)
            elif answers:  # a live worker answers every ping
                link.on_message(Pong(a.msg.t, a.msg.seq), now + 0.05)
    if answers:
        assert lost is None and link.up
    else:
        assert lost is not None and lost[0] == pytest.approx(3.05)
        assert "sent nothing for 3 s" in lost[1] and not link.up
