"""LinkCore, the controller's end of a worker connection, driven by hand (no I/O)."""

from __future__ import annotations

import pytest

from wanspec.core.actions import Send
from wanspec.core.link import LinkCore, LinkState, Lost, Route, Up, WorkerLoadReport
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Ping,
    Pong,
    SessionStats,
)
from wanspec.simulate.engine import CONTROLLER_HELLO, WORKER_HELLO


def connected(now: float = 1.0, **kw) -> LinkCore:
    link = LinkCore(CONTROLLER_HELLO, **kw)
    assert link.connect(now) == [Send(CONTROLLER_HELLO)]
    assert link.on_message(WORKER_HELLO, now + 0.04) == [Up()]
    return link


def test_handshake_measures_the_first_rtt_and_starts_pinging():
    link = LinkCore(CONTROLLER_HELLO, rtt_prior_s=0.5, ping_interval_s=1.0)
    assert link.rtt.get == 0.5 and link.state is LinkState.IDLE and link.may_connect(0.0)
    assert link.connect(1.0) == [Send(CONTROLLER_HELLO)]
    assert link.state is LinkState.HANDSHAKE and link.next_timer() == 1.0 + 10.0
    assert link.on_message(WORKER_HELLO, 1.04) == [Up()]
    assert link.up and link.peer == WORKER_HELLO
    assert link.rtt.get == pytest.approx(0.04)
    assert link.next_timer() == pytest.approx(2.04)


def test_pings_every_interval_and_pongs_feed_the_one_rtt_estimate():
    link = connected()
    assert link.on_timer(1.5) == []  # not due yet
    (ping,) = link.on_timer(2.04)
    assert ping == Send(Ping(2.04, 1))
    assert link.next_timer() == pytest.approx(3.04)
    assert link.on_message(Pong(2.04, 1), 2.10) == []
    assert link.rtt.get == pytest.approx(0.8 * 0.04 + 0.2 * 0.06)
    # a Pong from the future or of the wrong type teaches nothing
    link.on_message(Pong(9.0, 2), 2.2)
    link.on_message(Pong("x", 3), 2.2)  # type: ignore[arg-type]
    assert link.rtt.samples == 2


def test_per_request_messages_are_routed_by_request_id():
    link = connected()
    for msg in (Drafts(7, 0, 3, (1,)), SessionStats(7, 1, 1, 0, 0), Error("no", rid=7)):
        assert link.on_message(msg, 2.0) == [Route(7, msg)]


def test_a_connection_level_error_loses_the_link_and_backs_off():
    link = connected()
    (lost,) = link.on_message(Error("shutting down"), 2.0)
    assert lost == Lost("worker error: shutting down")
    assert link.state is LinkState.IDLE and link.last_error == lost.reason
    assert not link.may_connect(2.1) and link.may_connect(2.5)  # 0.5 s back-off
    link.connect(2.5)
    link.on_closed("refused", 2.6)
    assert not link.may_connect(3.5) and link.may_connect(3.6)  # doubled
    assert link.on_closed("refused", 3.0) == []  # told once


def test_handshake_failures_are_lost_links_with_a_reason():
    cases = [
        (Error("no sessions left", code="handshake"), "worker refused the connection"),
        (Drafts(1, 0, 0, (1,)), "did not answer with Hello"),
        (Hello(99, "worker", tokenizer="0" * 16), "protocol version mismatch"),
        (Hello(PROTOCOL_VERSION, "worker", tokenizer="f" * 16), "tokenizer mismatch"),
    ]
    for reply, reason in cases:
        link = LinkCore(CONTROLLER_HELLO)
        link.connect(0.0)
        (lost,) = link.on_message(reply, 0.1)
        assert isinstance(lost, Lost) and reason in lost.reason
        assert not link.up


def test_a_silent_worker_fails_the_handshake_at_its_deadline():
    link = LinkCore(CONTROLLER_HELLO, hello_timeout_s=2.0)
    link.connect(0.0)
    assert link.on_timer(1.9) == []
    (lost,) = link.on_timer(2.0)
    assert "handshake in time" in lost.reason


def test_a_peer_sending_controller_messages_is_not_a_worker():
    for msg in (Commit(1, 0, 3, (1,)), Cancel(1)):
        link = connected()
        (lost,) = link.on_message(msg, 2.0)
        assert isinstance(lost, Lost) and "protocol error" in lost.reason


def test_nothing_is_routed_before_the_handshake_or_after_the_loss():
    link = LinkCore(CONTROLLER_HELLO)
    assert link.on_message(Drafts(7, 0, 3, (1,)), 0.0) == []  # idle
    link = connected()
    link.on_closed("gone", 2.0)
    assert link.on_message(Drafts(7, 0, 3, (1,)), 2.1) == []
    assert link.next_timer() is None


def test_the_latest_worker_load_is_kept_and_forgotten_with_the_link():
    link = connected()
    assert link.worker_load is None  # no Pong yet
    link.on_message(Pong(2.04, 1, 0.5, 2.0), 2.10)
    assert link.worker_load == WorkerLoadReport(busy=0.5, demand=2.0, at=2.10)
    assert link.worker_demand.get == 2.0  # what every request's estimates read
    link.on_message(Pong(3.04, 2, 0.75, 0.5), 3.10)
    assert link.worker_load == WorkerLoadReport(0.75, 0.5, 3.10)  # the latest only
    assert link.worker_demand.get == 0.5
    link.on_closed("gone", 4.0)
    assert link.worker_load is None  # a new connection may reach another worker
    assert link.worker_demand.get == 0.0
    link.connect(5.0)
    link.on_message(WORKER_HELLO, 5.04)
    assert link.worker_load is None
