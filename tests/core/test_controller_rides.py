"""ControllerCore by hand: riding other requests' target passes (on_pass_departing), a worker
whose chain outgrows what it was allowed, and a request moved to another worker."""

from __future__ import annotations

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Log,
    RunDraft,
    RunTarget,
    Send,
    TargetDone,
)
from wanspec.core.policy import PolicyName
from wanspec.protocol.messages import (
    Commit,
    Drafts,
    SessionStart,
)

from controller_scenarios import PROMPT, RID, make, prefilled


# ---- riding other requests' target passes (on_pass_departing) -------------------------------


def test_a_waiting_request_rides_with_a_plain_step_when_it_has_no_drafts():
    c = prefilled()
    assert c.next_timer() is not None  # waiting for the worker's first chain
    out = c.on_pass_departing(0.11)
    assert out == [RunTarget(2, 3, (50,), 1)]
    assert c.next_timer() is None  # the wait is over: it has a pass in flight
    assert c.stats.plain_steps == 1


def test_a_waiting_request_rides_with_the_drafts_it_has():
    c = prefilled(gamma=3)
    # two of the three drafts of a window are here; remote waits for the third ...
    assert c.on_message(Drafts(RID, 0, 3, (50, 51, 52)), 0.11) == []
    # ... unless a pass leaves now: it joins with the two it has
    assert c.on_pass_departing(0.12) == [RunTarget(2, 3, (50, 51, 52), 3)]
    assert c.stats.remote_windows == 1


def test_the_offer_is_ignored_while_a_pass_is_in_flight_or_after_the_end():
    c = make()
    c.start(0.0)  # the prefill is in flight
    assert c.on_pass_departing(0.01) == []
    c = make(max_tokens=1)
    c.start(0.0)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert c.finished and c.on_pass_departing(0.2) == []


def test_a_local_round_is_not_interrupted_by_an_offer():
    c = prefilled(policy=PolicyName.ALWAYS, has_local=True)
    # `always` drafts locally at once instead of waiting: it is busy, the offer does nothing
    assert c.next_timer() is None
    assert c.on_pass_departing(0.11) == []


def test_every_policy_rides_and_stays_lossless_on_the_commit():
    for policy in PolicyName:
        c = prefilled(policy=policy, has_local=False)
        assert c.next_timer() is not None, policy  # without a local draft, all wait for the worker
        (run,) = c.on_pass_departing(0.11)
        assert isinstance(run, RunTarget) and not isinstance(run, RunDraft)
        out = c.on_target_done(TargetDone(run.op, (60,) * run.want), 0.14)
        assert c.transcript.output[:2] == [50, 60], policy
        assert not any(isinstance(a, DraftDone) for a in out)


def test_drafts_past_the_lookahead_or_the_session_end_are_a_hostile_worker():
    """An honest worker drafts at most its lookahead past our commits and never past the end it
    was given; a chain growing beyond is a worker filling our memory: the request drops it."""
    c = make(max_tokens=200, lookahead=12)
    c.start(0.0)
    ok = c.on_message(Drafts(RID, 0, 3, tuple(range(50, 62))), 0.05)  # positions 3..14: allowed
    assert not any(isinstance(a, Log) for a in ok) and c.worker_ok
    out = c.on_message(Drafts(RID, 0, 15, (70,)), 0.06)  # position 15: past 3 + 12
    assert any(isinstance(a, Log) and "allowed" in a.message for a in out)
    assert not c.worker_ok
    c = make(max_tokens=4, lookahead=64)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53, 54)), 0.05)  # 3 + 4 = 7 is the end
    assert not c.worker_ok


def test_a_request_moved_to_another_worker_starts_a_session_from_its_committed_prefix():
    c = prefilled()
    out = c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.12)
    c.on_target_done(TargetDone(2, (51, 52, 60, 61)), 0.22)  # commits 51 52 60
    c.on_worker_lost("connection closed", 0.23)  # (a plain step starts: target-only now)
    assert c.on_worker_attached(0.24) == [Send(SessionStart(
        RID, (1, 2, 3, 50, 51, 52, 60), lookahead=c.lookahead, max_position=len(PROMPT) + 8,
        branches=c.branches))]
    assert c.worker_ok and c.stats.worker_moves == 1
    assert c.on_worker_attached(0.25) == []  # already has a worker
    # the new worker's chain has its own epochs, starting at 0: it is not stale
    out = c.on_target_done(TargetDone(3, (62,)), 0.3)
    assert out[:2] == [EmitTokens((62,)), Send(Commit(RID, 0, 7, (62,)))]
    out = c.on_message(Drafts(RID, 0, 8, (63, 64, 65)), 0.35)
    assert out == [RunTarget(4, 7, (62, 63, 64), 3)]  # (3 tokens left: a window of 2)


def test_a_finished_request_is_not_moved():
    c = make(max_tokens=1)
    c.start(0.0)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert c.finished and c.on_worker_attached(0.2) == []


