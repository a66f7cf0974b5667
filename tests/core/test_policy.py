"""Redundancy policies on hand-built views: pure decisions, no models, no clock."""

from __future__ import annotations

import dataclasses

import pytest

from wanspec.core.chain import DraftToken
from wanspec.core.policy import (
    Decision,
    Kind,
    PolicyConfig,
    PolicyName,
    View,
    decide,
    expected_tokens,
    worth_waiting,
)

REMOTE = PolicyConfig(PolicyName.REMOTE)
ALWAYS = PolicyConfig(PolicyName.ALWAYS)
ENTROPY = PolicyConfig(PolicyName.ENTROPY, entropy_threshold=1.0)
ALL = [REMOTE, ALWAYS, ENTROPY]


def drafts(n: int, entropy: float = 0.1) -> list[DraftToken]:
    return [DraftToken(100 + i, entropy, 0.9) for i in range(n)]


def view(**kw) -> View:
    base = dict(now=1.0, gamma=4, remote=[], local=0, chain_live=True, chain_behind=0,
                worker_ok=True, has_local_draft=True, expect_remote_by=None,
                entropy_threshold=1.0, alpha=0.7, target_pass_s=0.03)
    base.update(kw)
    return View(**base)


# ---- expected_tokens / worth_waiting ---------------------------------------------------------


def test_expected_tokens_formula():
    assert expected_tokens(0.7, 0) == pytest.approx(1.0)
    assert expected_tokens(0.5, 4) == pytest.approx((1 - 0.5**5) / 0.5)
    assert expected_tokens(0.0, 7) == pytest.approx(1.0)  # nothing is ever accepted
    assert expected_tokens(1.0, 4) == pytest.approx(5.0, rel=1e-4)  # clamped below 1
    assert expected_tokens(-3.0, 4) == pytest.approx(1.0)  # clamped at 0
    assert expected_tokens(0.8, 5) > expected_tokens(0.8, 4) > expected_tokens(0.8, 1)


def test_worth_waiting_threshold_is_target_pass_times_gain():
    # alpha 0.5, gamma 4, nothing usable yet: gain = E(4)/E(0) - 1 = 0.9375
    gain = expected_tokens(0.5, 4) / expected_tokens(0.5, 0) - 1.0
    assert gain == pytest.approx(0.9375)
    limit = 0.03 * gain  # 0.028125 s
    v = view(alpha=0.5, now=1.0, expect_remote_by=1.0 + limit - 1e-4)
    assert worth_waiting(v, 0)
    v = view(alpha=0.5, now=1.0, expect_remote_by=1.0 + limit + 1e-4)
    assert not worth_waiting(v, 0)
    # with 3 of 4 drafts in hand the gain is much smaller: E(4)/E(3) - 1
    gain3 = expected_tokens(0.5, 4) / expected_tokens(0.5, 3) - 1.0
    v = view(alpha=0.5, now=1.0, expect_remote_by=1.0 + 0.03 * gain3 * 1.1)
    assert not worth_waiting(v, 3)
    v = view(alpha=0.5, now=1.0, expect_remote_by=1.0 + 0.03 * gain3 * 0.9)
    assert worth_waiting(v, 3)


def test_never_wait_without_an_expectation_or_when_it_is_past():
    assert not worth_waiting(view(expect_remote_by=None), 0)
    assert not worth_waiting(view(now=2.0, expect_remote_by=2.0), 0)
    assert not worth_waiting(view(now=2.0, expect_remote_by=1.5), 0)


def test_useless_worker_is_never_waited_for():
    # acceptance 0: a full window commits no more than a plain step, so waiting never pays
    v = view(alpha=0.0, now=1.0, expect_remote_by=1.0 + 1e-9, target_pass_s=10.0)
    assert not worth_waiting(v, 0)


# ---- worker not ok: fallback ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_worker_down_without_local_draft_is_target_only(policy):
    v = view(worker_ok=False, has_local_draft=False, remote=drafts(4), expect_remote_by=1.01)
    assert decide(policy, v) == Decision(Kind.PLAIN)


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_worker_down_with_local_draft_is_standard_sd(policy):
    v = view(worker_ok=False, expect_remote_by=1.01)
    assert decide(policy, v) == Decision(Kind.LOCAL_DRAFT)
    assert decide(policy, dataclasses.replace(v, local=3)) == Decision(Kind.LOCAL_DRAFT)
    assert decide(policy, dataclasses.replace(v, local=4)) == Decision(Kind.VERIFY_LOCAL)


# ---- a full remote window is verified at once by every policy ---------------------------------


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
@pytest.mark.parametrize("has_local", [True, False])
def test_full_remote_window_is_verified(policy, has_local):
    v = view(remote=drafts(4), has_local_draft=has_local, expect_remote_by=1.5)
    assert decide(policy, v) == Decision(Kind.VERIFY_REMOTE)
    # even uncertain drafts: nothing better to do with a full window
    v = view(remote=drafts(4, entropy=5.0), has_local_draft=has_local)
    assert decide(policy, v) == Decision(Kind.VERIFY_REMOTE)


# ---- remote ---------------------------------------------------------------------------------


def test_remote_waits_when_worth_it():
    v = view(remote=drafts(1), expect_remote_by=1.005)
    assert decide(REMOTE, v) == Decision(Kind.WAIT, until=1.005)


def test_remote_verifies_partial_window_when_not_worth_waiting():
    v = view(remote=drafts(2), expect_remote_by=1.5)
    assert decide(REMOTE, v) == Decision(Kind.VERIFY_REMOTE)
    v = view(remote=drafts(2), expect_remote_by=None)
    assert decide(REMOTE, v) == Decision(Kind.VERIFY_REMOTE)


def test_remote_plain_step_when_nothing_usable_and_not_worth_waiting():
    assert decide(REMOTE, view(remote=[], expect_remote_by=None)) == Decision(Kind.PLAIN)
    assert decide(REMOTE, view(remote=[], expect_remote_by=2.0)) == Decision(Kind.PLAIN)
    # even after a rejection, remote never drafts locally
    v = view(remote=[], chain_live=False, expect_remote_by=None)
    assert decide(REMOTE, v) == Decision(Kind.PLAIN)


def test_remote_ignores_local_draft_model():
    v = view(remote=[], chain_live=False, has_local_draft=True, expect_remote_by=None)
    assert decide(REMOTE, v).kind is Kind.PLAIN


# ---- always ---------------------------------------------------------------------------------


def test_always_fills_the_window_locally():
    assert decide(ALWAYS, view(remote=[])) == Decision(Kind.LOCAL_DRAFT)
    assert decide(ALWAYS, view(remote=drafts(2))) == Decision(Kind.LOCAL_DRAFT)
    assert decide(ALWAYS, view(remote=drafts(2), local=1)) == Decision(Kind.LOCAL_DRAFT)
    assert decide(ALWAYS, view(remote=drafts(2), local=2)) == Decision(Kind.VERIFY_LOCAL)
    assert decide(ALWAYS, view(remote=[], local=4)) == Decision(Kind.VERIFY_LOCAL)
    # it does not wait even when the worker is about to deliver
    assert decide(ALWAYS, view(remote=drafts(3), expect_remote_by=1.0001)).kind is Kind.LOCAL_DRAFT


def test_always_without_local_draft_behaves_like_remote():
    v = view(remote=drafts(1), has_local_draft=False, expect_remote_by=1.005)
    assert decide(ALWAYS, v) == decide(REMOTE, v) == Decision(Kind.WAIT, until=1.005)
    v = view(remote=[], has_local_draft=False, chain_live=False)
    assert decide(ALWAYS, v) == Decision(Kind.PLAIN)


# ---- entropy --------------------------------------------------------------------------------


def test_entropy_finishes_a_local_round_under_way():
    v = view(remote=drafts(1), local=1, expect_remote_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.LOCAL_DRAFT)
    v = view(remote=drafts(1), local=3)
    assert decide(ENTROPY, v) == Decision(Kind.VERIFY_LOCAL)


def test_entropy_verifies_early_when_drafts_are_uncertain():
    v = view(remote=[DraftToken(1, 0.2, 0.9), DraftToken(2, 1.5, 0.4)], expect_remote_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.VERIFY_REMOTE)
    # exactly at the threshold is not "above"
    v = view(remote=[DraftToken(1, 1.0, 0.5)], expect_remote_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.WAIT, until=1.001)


def test_entropy_threshold_comes_from_the_view():
    v = view(remote=[DraftToken(1, 0.5, 0.5)], expect_remote_by=1.001, entropy_threshold=0.4)
    assert decide(ENTROPY, v) == Decision(Kind.VERIFY_REMOTE)


def test_entropy_drafts_locally_after_a_rejection():
    v = view(remote=[], chain_live=False, expect_remote_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.LOCAL_DRAFT)


def test_entropy_drafts_locally_while_the_chain_catches_up():
    v = view(remote=[], chain_live=True, chain_behind=2, expect_remote_by=1.001)
    assert decide(ENTROPY, v) == Decision(Kind.LOCAL_DRAFT)


def test_entropy_waits_for_confident_drafts_like_remote():
    v = view(remote=drafts(2, entropy=0.1), expect_remote_by=1.002)
    assert decide(ENTROPY, v) == decide(REMOTE, v) == Decision(Kind.WAIT, until=1.002)
    v = view(remote=drafts(2, entropy=0.1), expect_remote_by=1.9)
    assert decide(ENTROPY, v) == Decision(Kind.VERIFY_REMOTE)
    v = view(remote=[], chain_live=True, chain_behind=0, expect_remote_by=None)
    assert decide(ENTROPY, v) == Decision(Kind.PLAIN)


def test_entropy_without_local_draft_never_drafts_locally():
    v = view(remote=[], chain_live=False, has_local_draft=False, expect_remote_by=None)
    assert decide(ENTROPY, v) == Decision(Kind.PLAIN)
    v = view(remote=drafts(1, entropy=9.0), has_local_draft=False, expect_remote_by=1.001)
    # the uncertainty shortcut belongs to the entropy policy, which needs a local draft
    assert decide(ENTROPY, v) == Decision(Kind.WAIT, until=1.001)


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name.value)
def test_every_decision_is_well_formed(policy):
    """Over a grid of views, decisions are of a known kind and WAIT always carries its deadline."""
    for k in range(0, 5):
        for local in range(0, 5 - k):
            for live in (True, False):
                for ok in (True, False):
                    for has_local in (True, False):
                        for expect in (None, 1.001, 3.0):
                            v = view(remote=drafts(k), local=local if has_local else 0,
                                     chain_live=live, worker_ok=ok, has_local_draft=has_local,
                                     expect_remote_by=expect)
                            dec = decide(policy, v)
                            assert isinstance(dec.kind, Kind)
                            if dec.kind is Kind.WAIT:
                                assert dec.until is not None and dec.until > v.now
                                assert ok
                            if not has_local:
                                assert dec.kind not in (Kind.LOCAL_DRAFT, Kind.VERIFY_LOCAL)
                            if dec.kind is Kind.VERIFY_REMOTE:
                                assert k > 0
