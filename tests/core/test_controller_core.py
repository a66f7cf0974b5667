"""ControllerCore driven by hand on fake time: every action checked (no models, no I/O).

The controller and worker together are simulated in test_controller_worker_simulation.py."""

from __future__ import annotations

import pytest

from wanspec.core.actions import (
    DraftDone,
    EmitTokens,
    Finished,
    Log,
    RunDraft,
    RunTarget,
    Send,
    Site,
    TargetDone,
    ThenVerify,
    WorkerLost,
)
from wanspec.core.chain import DraftToken
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.stopping import StopCriteria
from wanspec.errors import WanspecError
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    SessionStart,
    SessionStats,
)
from wanspec.sampling import SamplingParams

from controller_scenarios import PROMPT, RID, make, prefilled, round_done, worker_msgs

# ---- hand-driven scenarios --------------------------------------------------------------------


def test_start_sends_session_start_and_prefills():
    c = make(gamma=3, max_tokens=8, sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=5))
    actions = c.start(0.0)
    assert len(actions) == 2
    (ss,) = worker_msgs(actions)
    assert isinstance(ss, SessionStart)
    assert ss.rid == RID and ss.prompt == (1, 2, 3)
    assert (ss.temperature, ss.top_p, ss.top_k, ss.seed) == (0.8, 0.9, 0, 5)
    assert ss.max_position == len(PROMPT) + 8
    # automatic lookahead: at least two windows, covering a round trip of drafting
    assert ss.lookahead == c.lookahead >= 2 * 3
    assert actions[1] == RunTarget(1, 0, (1, 2, 3), 1)
    assert c.next_timer() is None  # busy: no timer


def test_explicit_lookahead_is_sent():
    c = make(lookahead=12)
    (ss,) = worker_msgs(c.start(0.0))
    assert ss.lookahead == 12


def test_without_worker_no_message_is_sent():
    c = make(use_worker=False)
    actions = c.start(0.0)
    assert actions == [RunTarget(1, 0, (1, 2, 3), 1)]
    actions = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert actions == [EmitTokens((50,)), RunTarget(2, 3, (50,), 1)]



def test_waits_for_the_first_chain_then_verifies_remote_drafts():
    c = make()
    c.start(0.0)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    # nothing usable yet, but the first chain is expected soon: wait (no action)
    assert out == [EmitTokens((50,)), Send(Commit(RID, 0, 3, (50,)))]
    deadline = c.next_timer()
    # the first chain was due at RTT + one draft (0.07, position 3); by now its drafts for
    # positions 4..6 are overdue, so they are expected one draft interval apart from now:
    # the third at 0.16, and the remote policy waits up to 1.5x as long for it
    assert deadline == pytest.approx(0.1 + 1.5 * (0.16 - 0.1))
    # drafts for 3 (already committed, agreeing) and 4 5 6 arrive: a full window
    out = c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.12)
    assert out == [RunTarget(2, 3, (50, 51, 52, 53), 4)]
    assert c.next_timer() is None
    assert c.stats.remote_windows == 1 and c.stats.remote_received == 4
    assert c.stats.stall_s == pytest.approx(0.02)


def test_timer_fires_a_plain_step_when_the_worker_is_late():
    c = prefilled()
    deadline = c.next_timer()
    assert deadline is not None
    assert c.on_timer(deadline - 0.01) == []  # too early: nothing happens
    assert c.next_timer() == deadline
    out = c.on_timer(deadline)
    assert out == [RunTarget(2, 3, (50,), 1)]
    assert c.stats.plain_steps == 1
    assert c.next_timer() is None
    assert c.on_timer(deadline + 1) == []  # a stale timer is harmless


def test_full_request_with_rejection_and_new_epoch():
    c = prefilled()
    out = c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.12)
    assert out == [RunTarget(2, 3, (50, 51, 52, 53), 4)]
    # the target accepts 51 52 and corrects 53 -> 60
    out = c.on_target_done(TargetDone(2, (51, 52, 60, 61)), 0.22)
    assert out[0] == EmitTokens((51, 52, 60))
    assert out[1] == Send(Commit(RID, 0, 4, (51, 52, 60)))  # contiguous with 3 + (50,)
    assert c.chain.dead  # the chain disagrees at position 6
    assert len(out) == 2 and c.next_timer() is not None  # waits for the new chain
    # a late draft of the dead epoch is dropped
    assert c.on_message(Drafts(RID, 0, 7, (54,)), 0.25) == []
    assert c.chain.dead and c.chain.stale_dropped == 1
    # the worker's new chain (epoch 1) from the committed end
    out = c.on_message(Drafts(RID, 1, 7, (70, 71, 72)), 0.3)
    assert out == [RunTarget(3, 6, (60, 70, 71, 72), 4)]
    out = c.on_target_done(TargetDone(3, (70, 71, 72, 73)), 0.4)
    assert out == [
        EmitTokens((70, 71, 72, 73)),
        Send(Commit(RID, 1, 7, (70, 71, 72, 73))),
        Send(Cancel(RID, "done")),
        Finished("max_tokens"),
    ]
    assert c.finished and c.transcript.output == [50, 51, 52, 60, 70, 71, 72, 73]
    assert c.metrics.target_passes == 3
    assert c.stats.remote_accepted == 5 and c.stats.remote_windows == 2
    assert c.next_timer() is None
    # nothing happens after the end
    assert c.on_message(Drafts(RID, 1, 11, (1,)), 0.5) == []
    assert c.on_worker_lost("late", 0.5) == []


def test_drafts_for_another_request_are_ignored():
    c = prefilled()
    assert c.on_message(Drafts(RID + 1, 0, 3, (50, 51, 52, 53)), 0.12) == []
    assert c.stats.remote_received == 0


def test_drafts_arriving_while_busy_are_kept_for_later():
    c = make()
    c.start(0.0)
    assert c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.05) == []  # prefill running
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out == [EmitTokens((50,)), Send(Commit(RID, 0, 3, (50,))),
                   RunTarget(2, 3, (50, 51, 52, 53), 4)]


def test_window_is_clamped_to_the_token_budget():
    c = make(gamma=4, max_tokens=3)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52)), 0.05)  # up to the session's end
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    # two tokens left: verify one draft (the correction/bonus is the second)
    assert out[-1] == RunTarget(2, 3, (50, 51), 2)
    out = c.on_target_done(TargetDone(2, (51, 52)), 0.2)
    assert out[0] == EmitTokens((51, 52)) and out[-1] == Finished("max_tokens")
    assert c.transcript.output == [50, 51, 52]


def test_last_token_is_a_plain_step():
    c = make(gamma=4, max_tokens=2)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52)), 0.05)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out[-1] == RunTarget(2, 3, (50,), 1)
    out = c.on_target_done(TargetDone(2, (51,)), 0.2)
    assert out[-1] == Finished("max_tokens")


def test_eos_finishes_and_cancels():
    c = make(eos={50}, max_tokens=8)
    c.start(0.0)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out == [EmitTokens((50,)), Send(Commit(RID, 0, 3, (50,))),
                   Send(Cancel(RID, "done")), Finished("eos")]


def test_eos_inside_an_accepted_window_truncates_the_commit():
    c = make(eos={52}, max_tokens=8)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.05)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    out = c.on_target_done(TargetDone(2, (51, 52, 53, 54)), 0.2)
    assert out[0] == EmitTokens((51, 52))
    assert out[1] == Send(Commit(RID, 0, 4, (51, 52)))
    assert out[-1] == Finished("eos")


def test_worker_lost_while_waiting_falls_back_to_target_only():
    c = prefilled()
    assert c.next_timer() is not None
    out = c.on_worker_lost("link killed", 0.11)
    assert len(out) == 2 and isinstance(out[0], Log)
    assert "link killed" in out[0].message and "target-only" in out[0].message
    assert out[1] == RunTarget(2, 3, (50,), 1)
    assert c.stats.worker_lost == "link killed" and not c.worker_ok
    assert c.on_worker_lost("again", 0.12) == []  # logged once
    # drafts that still trickle in are ignored; commits are no longer sent
    assert c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.13) == []
    out = c.on_target_done(TargetDone(2, (51,)), 0.2)
    assert out == [EmitTokens((51,)), RunTarget(3, 4, (51,), 1)]
    assert worker_msgs(out) == []


def test_worker_lost_while_busy_only_logs_then_uses_the_local_draft():
    c = make(PolicyName.REMOTE, has_local=True)
    c.start(0.0)
    out = c.on_worker_lost("connection closed", 0.05)
    assert len(out) == 1 and isinstance(out[0], Log)
    assert "local speculative decoding" in out[0].message
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    # no commit to the dead worker; standard SD with the local draft from here on: a round of
    # gamma draft passes in one call to the device
    assert out == [EmitTokens((50,)), RunDraft(2, Site.CONTROLLER, 0, (1, 2, 3, 50), 3,
                                     ThenVerify(3, (50,)))]
    out = c.on_draft_done(round_done(2, 51, 52, 53), 0.12)
    assert out == [RunTarget(3, 3, (50, 51, 52, 53), 4)]


def test_a_round_answered_with_the_wrong_number_of_proposals_is_refused():
    c = make(PolicyName.ALWAYS, has_local=True)
    c.start(0.0)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out[-1].count == 3
    with pytest.raises(RuntimeError, match="a round of 3 draft passes proposed 1"):
        c.on_draft_done(DraftDone(2, 51, 0.1, 0.9), 0.12)


def test_always_drafts_locally_and_rolls_back_the_local_cache():
    c = make(PolicyName.ALWAYS, has_local=True)
    c.start(0.0)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    # the whole window drafted in one round of three passes
    assert out[-1] == RunDraft(2, Site.CONTROLLER, 0, (1, 2, 3, 50), 3,
                                     ThenVerify(3, (50,)))
    promised = out[-1].then_verify
    # worker drafts arrive during a local round: kept, but the round is finished first
    assert c.on_message(Drafts(RID, 0, 3, (50, 51)), 0.125) == []
    done = round_done(2, 51, 52, 53)
    out = c.on_draft_done(done, 0.16)
    assert out == [RunTarget(3, 3, (50, 51, 52, 53), 4)]
    assert out == [promised.action(3, done)]  # the verification the round promised
    assert c.stats.local_windows == 1
    out = c.on_target_done(TargetDone(3, (51, 52, 99, 100)), 0.26)
    assert out[0] == EmitTokens((51, 52, 99))
    assert out[1] == Send(Commit(RID, 0, 4, (51, 52, 99)))
    # the local cache keeps 1 2 3 50 51 52 (valid); it is fed only the correction (then drafts
    # the rest of the next window: the worker's 99-less chain is void)
    assert out[2] == RunDraft(4, Site.CONTROLLER, 6, (99,), 3, ThenVerify(6, (99,)))
    assert c.metrics.draft_passes[Site.CONTROLLER.value] == 6  # two rounds of three passes


def test_a_round_ending_after_the_request_was_abandoned_asks_for_nothing():
    c = make(PolicyName.ALWAYS, has_local=True)
    c.start(0.0)
    assert c.on_target_done(TargetDone(1, (50,)), 0.1)[-1].then_verify is not None
    c.on_abandoned()
    assert c.on_draft_done(round_done(2, 51, 52, 53), 0.16) == []


def test_a_verification_started_early_is_timed_from_its_start():
    """``TargetDone.head_start``: the pass ran that long before the core asked for it."""
    times = []
    for head_start in (0.0, 0.05):
        c = make(PolicyName.ALWAYS, has_local=True)
        c.start(0.0)
        c.on_target_done(TargetDone(1, (50,)), 0.1)
        c.on_draft_done(round_done(2, 51, 52, 53), 0.16)
        c.on_target_done(TargetDone(3, (51, 52, 53, 54), head_start), 0.31)
        times.append(c.est.target_pass.seconds(4))
    assert times[1] > times[0]


def test_always_extends_a_partial_remote_window_with_local_drafts():
    c = make(PolicyName.ALWAYS, has_local=True)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51)), 0.05)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    # proposal = the worker's 51, then local drafts from position 5 (the local cache is empty)
    assert out[-1] == RunDraft(2, Site.CONTROLLER, 0, (1, 2, 3, 50, 51), 2,
                                 ThenVerify(3, (50, 51)))
    out = c.on_draft_done(round_done(2, 52, 53), 0.14)
    assert out == [RunTarget(3, 3, (50, 51, 52, 53), 4)]
    out = c.on_target_done(TargetDone(3, (51, 52, 53, 54)), 0.24)
    assert out[0] == EmitTokens((51, 52, 53, 54))
    assert c.stats.remote_accepted == 1  # only the leading worker draft counts as remote


def test_entropy_drafts_locally_after_a_rejection():
    c = make(PolicyName.ENTROPY, has_local=True)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.05)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    out = c.on_target_done(TargetDone(2, (51, 60, 61, 62)), 0.2)
    assert out[0] == EmitTokens((51, 60))
    assert c.chain.dead
    # the worker's new chain is an RTT away: hide it with a local draft pass
    assert isinstance(out[-1], RunDraft) and out[-1].site is Site.CONTROLLER


def test_entropy_verifies_uncertain_drafts_early():
    c = make(PolicyName.ENTROPY, has_local=True, gamma=4)
    c.start(0.0)
    c.on_message(Drafts(RID, 0, 3, (50, 51), entropy=(0.1, 3.0), top_prob=(0.9, 0.2)), 0.05)
    out = c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert out[-1] == RunTarget(2, 3, (50, 51), 2)


def test_drafts_without_confidence_signals_are_accepted():
    c = prefilled()
    out = c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53), entropy=(), top_prob=()), 0.12)
    assert out == [RunTarget(2, 3, (50, 51, 52, 53), 4)]


def test_unexpected_completion_is_an_error():
    c = make()
    c.start(0.0)
    with pytest.raises(RuntimeError):
        c.on_target_done(TargetDone(99, (1,)), 0.1)


def test_config_validation():
    with pytest.raises(WanspecError):
        ControllerConfig(gamma=0)
    with pytest.raises(WanspecError):
        ControllerConfig(lookahead=-1)


def test_adaptive_local_round_livelock():
    est = Estimates.with_priors(rtt_s=0.001, target_s=0.1, draft_s=0.001)
    est.acceptance.prior = 0.3
    c = ControllerCore(1, [1, 2, 3], StopCriteria(max_tokens=24), SamplingParams(),
                       ControllerConfig(gamma=2, policy=PolicyConfig(PolicyName.ADAPTIVE)),
                       has_local_draft=True, estimates=est)
    c.start(0.0)
    c.on_message(Drafts(1, 0, 3, tuple(range(100, 120)), (0.2,) * 20, (0.9,) * 20), 0.01)
    actions = c.on_target_done(TargetDone(1, (100,)), 0.1)
    t = 0.1
    for i in range(50):  # a local round is at most 2 * gamma passes; 50 is plenty
        run = actions[-1]
        if isinstance(run, RunTarget):
            return  # the round ended in a verification: no livelock
        assert isinstance(run, RunDraft)
        t += 0.001
        actions = c.on_draft_done(DraftDone(run.op, 500 + i, 0.1, 0.9), t)
    raise AssertionError("50 local draft passes without a target verification: livelock")


# ---- what the controller learns, and what it refuses ------------------------------------------


def test_worker_drafts_are_judged_even_when_never_verified():
    """The acceptance model learns from the worker's drafts for positions committed by plain
    steps too: every draft on the right prefix is scored once, against the committed token."""
    c = prefilled()  # committed: prompt + 50 (position 3)
    c.on_timer(c.next_timer())  # gave up waiting: plain step for position 4
    # the worker's chain arrives late: drafts for 3 (= 50), 4 and 5
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52)), 0.15)
    trials_before = sum(c.est.acceptance.trials)
    c.on_target_done(TargetDone(2, (51,)), 0.2)  # the plain step commits 51 at position 4
    # position 3 was judged on arrival (accepted, 'first'), position 4 now (accepted, 'next')
    assert sum(c.est.acceptance.trials) == pytest.approx(trials_before + 1, rel=1e-2)
    assert c.est.acceptance.trials[1] > 0 and c.est.acceptance.accepts[1] > 0


def test_a_position_is_judged_once_whoever_drafted_it():
    c = prefilled()
    c.on_message(Drafts(RID, 0, 3, (50, 51, 52, 53)), 0.12)  # verified as a remote window
    c.on_target_done(TargetDone(2, (51, 52, 60, 61)), 0.22)
    judged = sum(c.est.acceptance.trials)
    # 3 (on arrival), then 4, 5 accepted and 6 rejected in the window: four judgements, each once
    assert judged == pytest.approx(4, rel=1e-2)
    assert c.est.calibration.trials and sum(c.est.calibration.trials) == 4


@pytest.mark.parametrize("bad, reason", [
    (Drafts(RID, 0, 3, (600,)), "outside the vocabulary"),
    (Drafts(RID, 0, 3, (-1,)), "outside the vocabulary"),
    (Drafts(RID, 0, 3, (1.5,)), "outside the vocabulary"),  # type: ignore[arg-type]
    (Drafts(RID, "0", 3, (1,)), "invalid epoch"),  # type: ignore[arg-type]
    (Drafts(RID, 0, -3, (1,)), "invalid epoch"),
    (Drafts(RID, 0, 3, ()), "inconsistent lengths"),
    (Drafts(RID, 0, 3, (1, 2), (0.1,)), "inconsistent lengths"),
    (Drafts(RID, 0, 3, (1,), (float("nan"),)), "not a finite"),
    (Drafts(RID, 0, 3, (1,), ("high",)), "not a finite"),  # type: ignore[arg-type]
])
def test_invalid_drafts_drop_the_worker_and_decoding_goes_on(bad, reason):
    c = make()
    c.vocab_size = 512
    c.start(0.0)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    out = c.on_message(bad, 0.12)
    assert isinstance(out[0], Log) and reason in out[0].message
    assert not c.worker_ok and "protocol error" in (c.stats.worker_lost or "")
    assert out[-1] == RunTarget(2, 3, (50,), 1)  # target-only from here: same output


def test_an_error_for_this_request_drops_the_worker_and_others_are_ignored():
    c = prefilled()
    assert c.on_message(Error("too busy", rid=RID + 1), 0.11) == []
    out = c.on_message(Error("too busy", rid=RID, code="session"), 0.12)
    assert "worker refused the request: too busy" in out[0].message and not c.worker_ok


def test_the_workers_account_is_kept_even_after_the_end():
    c = make(max_tokens=1)
    c.start(0.0)
    c.on_target_done(TargetDone(1, (50,)), 0.1)
    assert c.finished
    c.on_message(SessionStats(RID + 1, 9, 9, 0, 0), 0.2)
    assert c.stats.worker_account is None
    c.on_message(SessionStats(RID, 3, 2, 1, 0), 0.2)
    assert c.stats.worker_account == SessionStats(RID, 3, 2, 1, 0)


def test_events_are_dispatched_by_type():
    c = make(has_local=True)
    c.start(0.0)
    out = c.on_event(WorkerLost("link killed"), 0.05)
    assert "link killed" in out[0].message and not c.worker_ok
    out = c.on_event(TargetDone(1, (50,)), 0.1)
    assert out[0] == EmitTokens((50,)) and isinstance(out[-1], RunDraft)
    run = out[-1]
    out = c.on_event(round_done(run.op, *range(51, 51 + run.count)), 0.12)
    assert isinstance(out[-1], RunTarget)


def test_config_validation_of_the_adaptive_budget():
    with pytest.raises(WanspecError, match="max slowdown"):
        ControllerConfig(policy=PolicyConfig(max_slowdown=0.9))
    with pytest.raises(WanspecError, match="max window"):
        ControllerConfig(max_window=0)


def test_a_position_is_judged_once_even_when_a_tree_walk_reaches_it_late():
    """A draft tree's walk can judge drafts far behind the committed end (a new epoch catching
    up from where the worker heard of a rejection).  Judging them a second time skewed the
    acceptance estimate after rejections (under-estimated by ~10% at long RTTs), and with it the
    adaptive policy's latency budget."""
    c = prefilled(max_tokens=64)
    c.transcript.commit(list(range(200, 240)))
    for position in range(4, 44):  # e.g. the local rounds judge them first
        c._judge(position, DraftToken(c.transcript.tokens[position] + (position % 3 == 0)))
    after_first = list(c.est.acceptance.trials)
    for position in range(10, 30):  # then a late walk of the worker's tree reaches them again
        c._judge(position, DraftToken(c.transcript.tokens[position] + (position % 3 == 0)))
    assert c.est.acceptance.trials == after_first


def test_a_round_teaches_the_one_token_pass_time_and_leaves_the_slope():
    """A round's elapsed time is one total: its later passes feed one token each, its first
    may catch up on several; the slope (learned from single passes) is not re-learned from it."""
    c = make(PolicyName.ALWAYS, has_local=True)
    c.start(0.0)
    run = c.on_target_done(TargetDone(1, (50,)), 0.1)[-1]
    assert run.count == 3 and len(run.tokens) == 4
    pass_time = c.est.local_draft_pass
    slope, base = pass_time.per_token.get, pass_time.base.get
    one_token = 0.004
    elapsed = one_token * 3 + slope * 3  # three one-token passes, the first catching up on 3 more
    c.on_draft_done(round_done(run.op, 51, 52, 53), 0.1 + elapsed)
    assert pass_time.per_token.get == slope
    assert base > one_token  # (the prior) ... moved toward the rounds' one-token pass
    assert one_token - 1e-9 <= pass_time.base.get < base
