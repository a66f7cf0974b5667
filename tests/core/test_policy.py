"""The fixed policies (remote, always, entropy) on hand-built views: pure decisions."""

from __future__ import annotations

import pytest

from policy_views import drafts, view
from wanspec.core.chain import DraftToken
from wanspec.core.estimates import Estimates
from wanspec.core.policy import (
    WAIT_SLACK,
    Decision,
    Kind,
    PolicyConfig,
    PolicyName,
    decide,
    worker_lookahead,
    worth_waiting,
)
from wanspec.core.rates import expected_tokens_iid

REMOTE = PolicyConfig(PolicyName.REMOTE)
ALWAYS = PolicyConfig(PolicyName.ALWAYS)
ENTROPY = PolicyConfig(PolicyName.ENTROPY, entropy_threshold=1.0)
ALL = [REMOTE, ALWAYS, ENTROPY]
LOCAL = Decision(Kind.LOCAL_DRAFT, then_verify=True)  # the last local draft of the window (then
# its verification)


def verify(window: int) -> Decision:
    return Decision(Kind.VERIFY_REMOTE, window=window)


def start_local(remote: int = 0, gamma: int = 4) -> Decision:
    """A local round: the worker's ``remote`` drafts, then the rest of the window drafted
    locally in one round (its length decided now)."""
    return Decision(Kind.LOCAL_DRAFT, window=remote, drafts=gamma - remote, then_verify=True)


def wait_for(expected: float, now: float = 1.0) -> Decision:
    return Decision(Kind.WAIT, until=now + WAIT_SLACK * (expected - now))


def alpha(a: float) -> Estimates:
    est = Estimates.with_priors(target_s=0.03)
    est.acceptance.prior = a
    return est


# ---- worth_waiting ----------------------------------------------------------------------------


def test_worth_waiting_threshold_is_target_pass_times_gain():
    # alpha 0.5, gamma 4, nothing usable yet: gain = E(4)/E(0) - 1 = 0.9375
    gain = expected_tokens_iid(0.5, 4) / expected_tokens_iid(0.5, 0) - 1.0
    assert gain == pytest.approx(0.9375)
    limit = 0.03 * gain  # 0.028125 s
    v = view(estimates=alpha(0.5))
    assert worth_waiting(v, 0, 4, 1.0 + limit - 1e-4)
    assert not worth_waiting(v, 0, 4, 1.0 + limit + 1e-4)
    # with 3 of 4 drafts in hand the gain is much smaller: E(4)/E(3) - 1
    gain3 = expected_tokens_iid(0.5, 4) / expected_tokens_iid(0.5, 3) - 1.0
    assert not worth_waiting(v, 3, 4, 1.0 + 0.03 * gain3 * 1.1)
    assert worth_waiting(v, 3, 4, 1.0 + 0.03 * gain3 * 0.9)


def test_useless_worker_is_never_waited_for():
    # acceptance 0: a full window commits no more than a plain step, so waiting never pays
    est = alpha(0.0)
    est.target_pass.base.prior = 10.0
    assert not worth_waiting(view(estimates=est), 0, 4, 1.0 + 1e-9)


def test_remote_gives_up_when_a_wait_expired():
    v = view(remote=drafts(1), expect_full_by=1.005, wait_expired=True)
    assert decide(REMOTE, v) == verify(1)
    assert decide(REMOTE, view(expect_full_by=1.005, wait_expired=True)) == Decision(Kind.PLAIN)


def test_only_one_token_left_is_a_plain_step_for_every_policy():
    for name in PolicyName:
        v = view(remote=drafts(4), budget=0)
        assert decide(PolicyConfig(name), v) == Decision(Kind.PLAIN)


def test_window_is_clamped_to_the_token_budget():
    assert decide(REMOTE, view(remote=drafts(4), budget=2)) == verify(2)


def test_worker_lookahead_covers_a_round_trip_of_drafting():
    assert worker_lookahead(4, 4, rtt_s=0.0, draft_interval_s=0.004) == 4 + 4 + 0 + 2
    assert worker_lookahead(4, 4, rtt_s=0.1, draft_interval_s=0.004) == 4 + 4 + 25 + 2
    assert worker_lookahead(4, 16, rtt_s=1.0, draft_interval_s=0.004) == 64  # capped


# ---- worker not ok: fallback ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_worker_down_without_local_draft_is_target_only(policy):
    v = view(worker_ok=False, has_local_draft=False, expect_full_by=1.01)
    assert decide(policy, v) == Decision(Kind.PLAIN)


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_worker_down_with_local_draft_is_standard_sd(policy):
    assert decide(policy, view(worker_ok=False, expect_full_by=1.01)) == start_local()
    assert decide(policy, view(worker_ok=False, local=3)) == LOCAL
    assert decide(policy, view(worker_ok=False, local=4)) == Decision(Kind.VERIFY_LOCAL)


# ---- a full remote window is verified at once by every policy ---------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
@pytest.mark.parametrize("has_local", [True, False])
def test_full_remote_window_is_verified(policy, has_local):
    v = view(remote=drafts(6), has_local_draft=has_local, expect_full_by=1.5)
    assert decide(policy, v) == verify(4)
    # even uncertain drafts: nothing better to do with a full window
    v = view(remote=drafts(4, entropy=5.0), has_local_draft=has_local)
    assert decide(policy, v) == verify(4)


# ---- remote ---------------------------------------------------------------------------------


def test_remote_waits_when_worth_it():
    v = view(remote=drafts(1), expect_full_by=1.005)
    assert decide(REMOTE, v) == wait_for(1.005)


def test_remote_verifies_partial_window_when_not_worth_waiting():
    v = view(remote=drafts(2), expect_full_by=1.5)
    assert decide(REMOTE, v) == verify(2)
    v = view(remote=drafts(2), expect_full_by=None)
    assert decide(REMOTE, v) == verify(2)


def test_remote_plain_step_when_nothing_usable_and_not_worth_waiting():
    assert decide(REMOTE, view(remote=[], expect_full_by=None)) == Decision(Kind.PLAIN)
    assert decide(REMOTE, view(remote=[], expect_full_by=2.0)) == Decision(Kind.PLAIN)
    # even after a rejection, remote never drafts locally
    v = view(remote=[], chain_live=False, expect_full_by=None)
    assert decide(REMOTE, v) == Decision(Kind.PLAIN)


def test_remote_ignores_local_draft_model():
    v = view(remote=[], chain_live=False, has_local_draft=True, expect_full_by=None)
    assert decide(REMOTE, v).kind is Kind.PLAIN


# ---- always ---------------------------------------------------------------------------------


def test_always_fills_the_window_locally():
    assert decide(ALWAYS, view(remote=[])) == start_local(0)
    assert decide(ALWAYS, view(remote=drafts(2))) == start_local(2)
    assert decide(ALWAYS, view(remote=drafts(2), proposal_remote=2, local=1)) == LOCAL
    v = view(remote=drafts(2), proposal_remote=2, local=2)
    assert decide(ALWAYS, v) == Decision(Kind.VERIFY_LOCAL)
    assert decide(ALWAYS, view(remote=[], local=4)) == Decision(Kind.VERIFY_LOCAL)
    # it does not wait even when the worker is about to deliver
    assert decide(ALWAYS, view(remote=drafts(3), expect_full_by=1.0001)) == start_local(3)


def test_always_without_local_draft_behaves_like_remote():
    v = view(remote=drafts(1), has_local_draft=False, expect_full_by=1.005)
    assert decide(ALWAYS, v) == decide(REMOTE, v) == wait_for(1.005)
    v = view(remote=[], has_local_draft=False, chain_live=False)
    assert decide(ALWAYS, v) == Decision(Kind.PLAIN)


# ---- entropy --------------------------------------------------------------------------------


def test_entropy_finishes_a_local_round_under_way():
    v = view(remote=drafts(1), proposal_remote=1, local=1, expect_full_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.LOCAL_DRAFT, drafts=2, then_verify=True)  # the window's rest
    v = view(remote=drafts(1), proposal_remote=1, local=3)
    assert decide(ENTROPY, v) == Decision(Kind.VERIFY_LOCAL)


def test_entropy_verifies_early_when_drafts_are_uncertain():
    v = view(remote=[DraftToken(1, 0.2, 0.9), DraftToken(2, 1.5, 0.4)], expect_full_by=1.001)
    assert decide(ENTROPY, v) == verify(2)
    # exactly at the threshold is not "above"
    v = view(remote=[DraftToken(1, 1.0, 0.5)], expect_full_by=1.001)
    assert decide(ENTROPY, v) == wait_for(1.001)


def test_entropy_threshold_comes_from_the_policy():
    v = view(remote=[DraftToken(1, 0.5, 0.5)], expect_full_by=1.001)
    policy = PolicyConfig(PolicyName.ENTROPY, entropy_threshold=0.4)
    assert decide(policy, v) == verify(1)


def test_entropy_drafts_locally_after_a_rejection():
    v = view(remote=[], chain_live=False, expect_full_by=1.001)
    assert decide(ENTROPY, v) == start_local()


def test_entropy_drafts_locally_while_the_chain_catches_up():
    v = view(remote=[], chain_live=True, chain_behind=2, expect_full_by=1.001)
    assert decide(ENTROPY, v) == start_local()


def test_entropy_waits_for_confident_drafts_like_remote():
    v = view(remote=drafts(2, entropy=0.1), expect_full_by=1.002)
    assert decide(ENTROPY, v) == decide(REMOTE, v) == wait_for(1.002)
    v = view(remote=drafts(2, entropy=0.1), expect_full_by=1.9)
    assert decide(ENTROPY, v) == verify(2)
    v = view(remote=[], chain_live=True, chain_behind=0, expect_full_by=None)
    assert decide(ENTROPY, v) == Decision(Kind.PLAIN)


def test_entropy_without_local_draft_never_drafts_locally():
    v = view(remote=[], chain_live=False, has_local_draft=False, expect_full_by=None)
    assert decide(ENTROPY, v) == Decision(Kind.PLAIN)
    v = view(remote=drafts(1, entropy=9.0), has_local_draft=False, expect_full_by=1.001)
    # the uncertainty shortcut belongs to the entropy policy, which needs a local draft
    assert decide(ENTROPY, v) == wait_for(1.001)


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_every_decision_is_well_formed(policy):
    """Over a grid of views, decisions are of a known kind and WAIT always carries its deadline."""
    for k in range(0, 5):
        for local in range(0, 5 - k):
            for live in (True, False):
                for ok in (True, False):
                    for has_local in (True, False):
                        for expect in (None, 1.001, 3.0):
                            v = view(remote=drafts(k) if ok else (),
                                     local=local if has_local else 0, proposal_remote=k,
                                     chain_live=live, worker_ok=ok, has_local_draft=has_local,
                                     expect_full_by=expect if ok else None)
                            dec = decide(policy, v)
                            assert isinstance(dec.kind, Kind)
                            if dec.kind is Kind.WAIT:
                                assert dec.until is not None and dec.until > v.now
                                assert ok
                            if not has_local:
                                assert dec.kind not in (Kind.LOCAL_DRAFT, Kind.VERIFY_LOCAL)
                            if dec.kind is Kind.VERIFY_REMOTE:
                                assert k > 0
