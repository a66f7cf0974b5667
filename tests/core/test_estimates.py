"""What the controller learns online: EWMAs, pass times, acceptance with its error bounds."""

from __future__ import annotations

import random

import pytest

from wanspec.core.estimates import AcceptanceModel, Estimates, Ewma, PassTime


def test_ewma_uses_its_prior_until_the_first_sample():
    e = Ewma(0.5)
    assert e.get == 0.5 and e.samples == 0
    assert e.update(1.0) == 1.0  # the first sample replaces the prior
    assert e.update(0.0) == pytest.approx(0.8)


def test_pass_time_learns_the_base_and_the_per_token_slope():
    t = PassTime.with_prior(0.030, 0.0)
    for _ in range(30):
        t.update(1, 0.012)  # single-token passes teach the base
        t.update(5, 0.012 + 4 * 0.002)  # longer ones the slope above it
    assert t.seconds(1) == pytest.approx(0.012, rel=1e-3)
    assert t.seconds(9) == pytest.approx(0.012 + 8 * 0.002, rel=1e-2)
    assert t.seconds(0) == t.seconds(1)


def test_acceptance_starts_at_its_prior():
    m = AcceptanceModel()
    assert m.pooled == pytest.approx(m.prior)
    assert m.rate(False) == m.rate(True) == pytest.approx(m.prior)


def test_acceptance_learns_separate_rates_after_an_accept_and_otherwise():
    """Bursty text: a draft after an accepted one is likelier to be accepted (a run goes on)."""
    m = AcceptanceModel()
    rng = random.Random(1)
    for _ in range(5000):
        m.update(True, rng.random() < 0.9)
        m.update(False, rng.random() < 0.4)
    assert m.rate(True) == pytest.approx(0.9, abs=0.03)
    assert m.rate(False) == pytest.approx(0.4, abs=0.04)
    assert m.window_rates(0, 3) == [m.rate(False), m.rate(True), m.rate(True)]
    assert m.window_rates(2, 2) == [m.rate(True), m.rate(True)]


def test_acceptance_follows_a_change_of_text():
    m = AcceptanceModel(memory=100)
    for _ in range(1000):
        m.update(True, True)
    for _ in range(500):
        m.update(True, False)
    assert m.rate(True) < 0.05  # the old text has faded


def test_error_bounds_shrink_with_evidence_and_stay_in_range():
    m = AcceptanceModel()
    wide = m.bound(False, 1.0) - m.bound(False, -1.0)
    for i in range(400):
        m.update(False, i % 4 != 0)  # 0.75
    narrow = m.bound(False, 1.0) - m.bound(False, -1.0)
    assert 0 < narrow < wide / 5
    assert m.bound(False, -1.0) < m.rate(False) < m.bound(False, 1.0)
    assert m.window_rates(0, 2, errors=1.0) == [m.bound(False, 1.0), m.bound(True, 1.0)]
    assert 0.0 <= m.bound(True, -50.0) <= m.bound(True, 50.0) <= 1.0


def test_a_worker_over_capacity_is_expected_to_draft_slower_until_observed():
    demand = Ewma(0.0, weight=1.0)
    est = Estimates.with_priors(draft_s=0.004, worker_demand=demand)
    assert est.worker_draft_interval == pytest.approx(0.004)
    demand.update(0.5)  # within capacity: every session is in every pass
    assert est.worker_draft_interval == pytest.approx(0.004)
    demand.update(3.0)  # three sessions per pass slot: a draft every third pass
    assert est.worker_draft_interval == pytest.approx(0.012)
    for _ in range(20):
        est.draft_interval.update(0.020)  # observed slower still: the observation wins
    assert est.worker_draft_interval == pytest.approx(0.020, rel=0.05)
