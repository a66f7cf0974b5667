"""The adaptive policy prices options per committed token; check its choices on hand-built views."""

from wanspec.core.calibration import EntropyCalibration
from wanspec.core.chain import DraftToken
from wanspec.core.policy import (
    Kind,
    PolicyConfig,
    PolicyName,
    View,
    decide,
    expected_run,
    expected_tokens,
    optimal_gamma,
)

ADAPTIVE = PolicyConfig(PolicyName.ADAPTIVE)


def view(**kw) -> View:
    base = dict(now=0.0, gamma=4, remote=[], local=0, chain_live=True, chain_behind=0,
                worker_ok=True, has_local_draft=True, expect_remote_by=None,
                entropy_threshold=1.0, alpha=0.7, target_pass_s=0.030, remote_accept_p=(),
                verify_per_token_s=0.0005, local_draft_s=0.004, local_gamma=4)
    base.update(kw)
    return View(**base)


def test_expected_run_matches_closed_form_for_iid_acceptance():
    for a in (0.3, 0.6, 0.9):
        for g in range(0, 7):
            assert abs(expected_run([a] * g) - expected_tokens(a, g)) < 1e-12


def test_full_confident_remote_window_is_verified_at_once():
    drafts = [DraftToken(t, 0.1, 0.95) for t in range(6)]
    d = decide(ADAPTIVE, view(remote=drafts, remote_accept_p=(0.95,) * 6))
    assert d.kind is Kind.VERIFY_REMOTE and d.window == 6  # long windows of likely drafts pay


def test_unlikely_tail_is_cut_from_the_window():
    drafts = [DraftToken(t) for t in range(6)]
    d = decide(ADAPTIVE, view(remote=drafts, remote_accept_p=(0.95, 0.9, 0.01, 0.9, 0.9, 0.9),
                              verify_per_token_s=0.003))
    assert d.kind is Kind.VERIFY_REMOTE and d.window == 2


def test_useless_drafts_fall_back_to_plain_target_steps():
    # acceptance ~0: neither waiting for the worker nor drafting locally can beat a plain step
    d = decide(ADAPTIVE, view(alpha=0.0, chain_live=False, expect_remote_by=0.02))
    assert d.kind is Kind.PLAIN


def test_short_wait_for_the_worker_beats_local_drafting():
    d = decide(ADAPTIVE, view(alpha=0.8, chain_live=False, expect_remote_by=0.002))
    assert d.kind is Kind.WAIT and d.until == 0.002


def test_long_wait_prefers_local_drafting_when_drafts_are_good():
    d = decide(ADAPTIVE, view(alpha=0.8, chain_live=False, expect_remote_by=0.150))
    assert d.kind is Kind.LOCAL_DRAFT


def test_busy_pass_weight_shifts_choice_towards_waiting():
    v = view(alpha=0.8, chain_live=False, expect_remote_by=0.030)
    assert decide(PolicyConfig(PolicyName.ADAPTIVE, busy_pass_weight=0.0), v).kind is Kind.LOCAL_DRAFT
    assert decide(PolicyConfig(PolicyName.ADAPTIVE, busy_pass_weight=20.0), v).kind is Kind.WAIT


def test_local_round_under_way_is_finished():
    assert decide(ADAPTIVE, view(local=2, local_gamma=4)).kind is Kind.LOCAL_DRAFT
    assert decide(ADAPTIVE, view(local=4, local_gamma=4)).kind is Kind.VERIFY_LOCAL


def test_worker_lost_without_local_draft_is_target_only():
    assert decide(ADAPTIVE, view(worker_ok=False, has_local_draft=False)).kind is Kind.PLAIN


def test_optimal_gamma_grows_with_acceptance():
    low = optimal_gamma(0.4, 0.030, 0.004)
    high = optimal_gamma(0.9, 0.030, 0.004)
    assert 1 <= low < high <= 16


def test_calibration_learns_entropy_to_acceptance():
    cal = EntropyCalibration()
    for _ in range(200):
        cal.update(0.05, True)
        cal.update(2.5, False)
    assert cal.p_accept(0.05) > 0.9
    assert cal.p_accept(2.5) < 0.1
    # an unseen bucket is shrunk to the overall rate
    assert abs(cal.p_accept(0.6) - cal.overall) < 1e-9
