"""The latency-budgeted adaptive policy on hand-built views: pure decisions, no models, no clock."""

from __future__ import annotations

import dataclasses

import pytest

from policy_views import drafts, view
from wanspec.core.adaptive import (
    LatencyAccount,
    budget_tpot,
    decide_adaptive,
    fresh_options,
    local_round_options,
)
from wanspec.core.estimates import Estimates
from wanspec.core.policy import Decision, Kind, PolicyConfig, PolicyName, decide
from wanspec.core.rates import best_local_tpot

ADAPTIVE = PolicyConfig(PolicyName.ADAPTIVE)


def learned(alpha: float, judged: int = 2000, target_s: float = 0.030, draft_s: float = 0.004,
            per_token_s: float = 0.0005) -> Estimates:
    """Estimates after ``judged`` drafts accepted at rate ``alpha`` (and as many calibrations)."""
    est = Estimates.with_priors(rtt_s=0.03, target_s=target_s, draft_s=draft_s,
                                verify_per_token_s=per_token_s)
    accepted = 0
    for i in range(judged):
        ok = accepted < alpha * (i + 1)  # exactly alpha of them, evenly spread
        accepted += ok
        est.acceptance.update(after_accept=i % 2 == 1, accepted=ok)
        est.calibration.update(0.1 if ok else 2.5, ok)
    return est


def adaptive_view(est: Estimates, slack: float, **kw):
    budget = budget_tpot(est, 1.05, kw.get("has_local_draft", True))
    return view(estimates=est, slack_s=slack, budget_tpot_s=budget, **kw)


def test_budget_is_the_best_local_decoding_times_the_slowdown_capped_at_target_only():
    est = learned(0.8)
    best, gamma = best_local_tpot(est.acceptance, est.target_pass, 0.004, errors=1.0)
    assert gamma >= 4 and best < 0.030 / 2
    assert budget_tpot(est, 1.05, True) == pytest.approx(1.05 * best)
    assert budget_tpot(est, 1.2, True) == pytest.approx(1.2 * best)
    # without a local draft model, the best the busy site can do alone is target-only
    assert budget_tpot(est, 1.05, False) == pytest.approx(0.030)
    # useless drafts: local SD is slower than target-only, which then is the reference (P3)
    assert budget_tpot(learned(0.05), 1.05, True) == pytest.approx(0.030)


def test_the_budget_reference_errs_on_the_fast_side_while_little_is_known():
    few, many = learned(0.8, judged=20), learned(0.8, judged=2000)
    assert budget_tpot(few, 1.05, True) < budget_tpot(many, 1.05, True)


def test_a_full_window_of_confident_worker_drafts_is_verified_at_once():
    est = learned(0.8)
    d = decide(ADAPTIVE, adaptive_view(est, 0.0, remote=drafts(8, entropy=0.1)))
    assert d == Decision(Kind.VERIFY_REMOTE, window=8)


def test_unlikely_worker_drafts_are_cut_from_the_window():
    est = learned(0.8)
    remote = drafts(2, entropy=0.1) + drafts(6, entropy=2.5)  # the tail is likely rejected
    d = decide(ADAPTIVE, adaptive_view(est, 0.0, remote=remote, has_local_draft=False))
    assert d == Decision(Kind.VERIFY_REMOTE, window=2)


def after_a_rejection(est: Estimates, slack: float):
    """The worker's new chain is a round trip away: its drafts from 30 ms on, one every 4 ms."""
    return adaptive_view(est, slack=slack, chain_live=False, expect_full_by=1.030, every=0.004)


def test_with_slack_in_hand_it_waits_for_the_worker_instead_of_drafting():
    d = decide(ADAPTIVE, after_a_rejection(learned(0.8), slack=0.060))
    assert d.kind is Kind.WAIT and d.until is not None and d.until >= 1.030


def test_without_slack_it_drafts_locally_rather_than_wait_a_round_trip():
    d = decide(ADAPTIVE, after_a_rejection(learned(0.8), slack=0.0))
    assert d == Decision(Kind.LOCAL_DRAFT, window=0)


def test_the_more_slack_the_fewer_local_drafts_it_plans():
    """The smallest local round that fits the budget: with some slack, a shorter one."""
    est = learned(0.8)
    options = fresh_options(after_a_rejection(est, 0.0))
    windows = {}
    for slack in (0.0, 0.010):
        v = after_a_rejection(est, slack)
        local = [o for o in options if o.kind is Kind.LOCAL_DRAFT
                 and v.slack_s + o.tokens * v.budget_tpot_s - o.seconds >= 0]
        windows[slack] = min(round(o.busy_draft_s / 0.004) for o in local)
    assert windows[0.010] < windows[0.0]


def test_over_budget_it_takes_the_option_that_wins_back_the_most():
    est = learned(0.8)
    v = adaptive_view(est, slack=-0.5, chain_live=False, expect_full_by=1.001)
    best = max(fresh_options(v), key=lambda o: o.tokens * v.budget_tpot_s - o.seconds)
    assert decide_adaptive(v) == best.decision()


def test_over_budget_a_local_round_is_not_cut_short():
    """After one local draft, 'verify now' looks fastest on the time still to come (the draft
    made seems free); over budget the round goes on while drafts are worth their time."""
    est = learned(0.7)
    v = adaptive_view(est, slack=-0.5, local=4, chain_live=False)
    fastest_from_now = min(local_round_options(v), key=lambda o: o.seconds / o.tokens)
    assert fastest_from_now.kind is Kind.VERIFY_LOCAL  # the trap
    assert decide(ADAPTIVE, v) == Decision(Kind.LOCAL_DRAFT)


def test_useless_drafts_give_target_only_decoding():
    est = learned(0.02)
    v = adaptive_view(est, slack=0.0, chain_live=False, expect_full_by=1.001)
    assert decide(ADAPTIVE, v) == Decision(Kind.PLAIN)
    # even with worker drafts in hand: verifying them costs more than it commits
    v = adaptive_view(est, slack=0.0, remote=drafts(4, entropy=2.5))
    assert decide(ADAPTIVE, v) == Decision(Kind.PLAIN)


def test_a_local_round_is_dropped_when_the_worker_caught_up():
    est = learned(0.8)
    v = adaptive_view(est, slack=0.0, remote=drafts(8, entropy=0.1), local=1)
    assert decide(ADAPTIVE, v) == Decision(Kind.VERIFY_REMOTE, window=8)


def test_a_local_round_is_verified_after_an_uncertain_draft():
    est = learned(0.8)
    base = adaptive_view(est, slack=0.0, local=2)
    uncertain = dataclasses.replace(base, proposal=drafts(1, 0.1) + drafts(1, 2.5))
    assert decide(ADAPTIVE, uncertain) == Decision(Kind.VERIFY_LOCAL)


def test_one_token_left_is_a_plain_step():
    est = learned(0.8)
    assert decide(ADAPTIVE, adaptive_view(est, 0.0, remote=drafts(4), budget=0)).kind is Kind.PLAIN


@pytest.mark.parametrize("slack", [-1.0, 0.0, 0.02, 1.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.95])
def test_every_decision_is_well_formed(slack, alpha):
    est = learned(alpha)
    for k in range(0, 6):
        for local in range(0, 3):
            for ok in (True, False):
                for has_local in (True, False):
                    v = adaptive_view(est, slack, remote=drafts(k) if ok else (),
                                      local=local if has_local else 0, proposal_remote=0,
                                      worker_ok=ok, has_local_draft=has_local,
                                      expect_full_by=1.01 if ok else None)
                    d = decide(ADAPTIVE, v)
                    if d.kind is Kind.WAIT:
                        assert ok and d.until is not None and d.until > v.now
                    if not has_local:
                        assert d.kind not in (Kind.LOCAL_DRAFT, Kind.VERIFY_LOCAL)
                    if d.kind is Kind.VERIFY_REMOTE:
                        assert d.window is not None and 1 <= d.window <= k


def test_under_load_a_draft_pass_is_priced_at_the_requests_it_delays():
    """Alone, without slack, it drafts locally (above); when every target pass carries 32
    requests and a draft pass only a few, a draft pass costs the others their time too, and
    waiting for the worker (riding the passes that run anyway) is the better deal."""
    est = learned(0.8)
    assert est.draft_price == 1.0
    for _ in range(50):
        est.target_batch.update(32.0)
        est.draft_batch.update(2.0)
    assert est.draft_price == pytest.approx(16.0, rel=0.01)
    d = decide(ADAPTIVE, after_a_rejection(est, slack=0.0))
    assert d.kind is not Kind.LOCAL_DRAFT
    for _ in range(50):  # drafts in lockstep: the pass is shared by those it delays, and
        est.observe_busy_pass(False, 32)  # the target passes carry windows of 4 anyway
        est.observe_busy_pass(True, 32, longest=5)
    assert est.draft_price == pytest.approx(1.0, rel=0.01)
    assert decide(ADAPTIVE, after_a_rejection(est, slack=0.0)) == Decision(Kind.LOCAL_DRAFT,
                                                                           window=0)


def test_under_load_a_window_longer_than_the_pass_carries_is_charged_for_the_others():
    est = learned(0.8)
    alone = fresh_options(adaptive_view(est, 0.0, remote=drafts(8)))
    for _ in range(50):
        est.observe_busy_pass(True, 32, longest=3)  # 31 others, windows of 2 drafts
    shared = fresh_options(adaptive_view(est, 0.0, remote=drafts(8)))
    by = lambda opts, w: next(o for o in opts if o.kind is Kind.VERIFY_REMOTE and o.window == w)
    assert by(shared, 2).seconds == pytest.approx(by(alone, 2).seconds)  # as long as the rest
    extra = by(alone, 8).seconds - by(alone, 2).seconds  # six more tokens in the pass
    assert by(shared, 8).seconds == pytest.approx(by(alone, 8).seconds + 31 * extra)


def test_the_latency_account_keeps_the_first_token_off_and_reprices_every_token_so_far():
    account = LatencyAccount(credit_per_token_s=0.001)
    account.earn(1, now=1.0, budget_tpot_s=0.02)  # the first token: time to first token
    assert (account.first_token_at, account.tokens) == (1.0, 0)
    account.earn(3, now=1.05, budget_tpot_s=0.02)  # 3 tokens allowed 60 ms, took 50
    assert account.slack(1.05, tokens_to_come=0) == pytest.approx(0.010)
    assert account.slack(1.05, tokens_to_come=10) == pytest.approx(0.020)  # credit lent ahead
    account.earn(1, now=1.08, budget_tpot_s=0.01)  # a new estimate applies to all 4 tokens
    assert account.slack(1.08, tokens_to_come=0) == pytest.approx(4 * 0.01 - 0.08)
    assert account.unspent_per_token(1.08) == pytest.approx((4 * 0.01 - 0.08) / 4)
    account.earn(1, now=1.09)  # no new estimate (not adaptive): the allowance stands
    assert account.budget_tpot_s == 0.01


def test_an_account_without_tokens_has_no_slack_and_left_nothing():
    account = LatencyAccount(credit_per_token_s=0.5)
    assert account.slack(3.0, tokens_to_come=10) == 0.0
    account.earn(0, now=2.0)  # nothing committed: nothing on the account, not even TTFT
    assert account.first_token_at is None
    account.earn(1, now=3.0)
    assert account.unspent_per_token(4.0) == 0.0
