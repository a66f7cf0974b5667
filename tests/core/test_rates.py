"""The speculative-decoding arithmetic the policies price their options with."""

from __future__ import annotations

import pytest

from wanspec.core.estimates import AcceptanceModel, PassTime
from wanspec.core.rates import (
    best_local_tpot,
    expected_tokens,
    expected_tokens_by_window,
    expected_tokens_iid,
    sd_round,
)


def iid(alpha: float) -> AcceptanceModel:
    return AcceptanceModel(prior=alpha)  # (no judgements yet: every rate is the prior)


def test_expected_tokens_matches_the_closed_form_for_iid_acceptance():
    for a in (0.0, 0.3, 0.6, 0.9):
        for w in range(0, 8):
            assert expected_tokens([a] * w) == pytest.approx(expected_tokens_iid(a, w), abs=1e-12)
    assert expected_tokens_iid(0.5, 4) == pytest.approx((1 - 0.5**5) / 0.5)
    assert expected_tokens_iid(1.0, 4) == pytest.approx(5.0, rel=1e-4)  # clamped below 1
    assert expected_tokens_iid(-3.0, 4) == pytest.approx(1.0)  # clamped at 0


def test_expected_tokens_by_window_lists_every_prefix():
    ps = [0.9, 0.5, 0.2]
    assert expected_tokens_by_window(ps) == pytest.approx([1.0, 1.9, 2.35, 2.44])
    assert expected_tokens_by_window([]) == [1.0]


def test_an_sd_round_costs_its_draft_passes_and_one_verification():
    target = PassTime.with_prior(0.030, 0.0005)
    seconds, tokens = sd_round(4, iid(0.8), target, 0.004)
    assert seconds == pytest.approx(4 * 0.004 + 0.030 + 4 * 0.0005)
    assert tokens == pytest.approx(expected_tokens_iid(0.8, 4))


def test_best_local_decoding_is_target_only_when_drafts_do_not_pay():
    target = PassTime.with_prior(0.015, 0.0005)
    assert best_local_tpot(iid(0.05), target, 0.005) == (pytest.approx(0.015), 0)
    assert best_local_tpot(iid(0.9), target, None) == (pytest.approx(0.015), 0)  # no draft model
    tpot, gamma = best_local_tpot(iid(0.9), target, 0.001)
    assert gamma > 1 and tpot < 0.015 / 2


def test_the_best_window_grows_with_acceptance():
    target = PassTime.with_prior(0.030, 0.0005)
    _, low = best_local_tpot(iid(0.4), target, 0.004)
    _, high = best_local_tpot(iid(0.9), target, 0.004)
    assert 1 <= low < high <= 10


def test_a_short_request_favours_shorter_windows():
    """The last round of a request is cut short: long windows pay less on short requests."""
    target = PassTime.with_prior(0.050, 0.0005)
    long_tpot, long_gamma = best_local_tpot(iid(0.9), target, 0.002)
    short_tpot, short_gamma = best_local_tpot(iid(0.9), target, 0.002, tokens=8)
    assert short_tpot > long_tpot and short_gamma <= long_gamma
    tpot, _ = best_local_tpot(iid(0.9), target, 0.002, tokens=10**9)
    assert tpot == pytest.approx(long_tpot)
