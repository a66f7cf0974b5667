"""SLO-aware admission: the pass-time fit, the TPOT prediction, first-come admission."""

from __future__ import annotations

import pytest

from wanspec.core.admission import Admission, PassTimes


def test_pass_times_fit_a_line_and_never_a_falling_one():
    p = PassTimes()
    assert p.predict(10) is None
    p.add(8, 0.030)
    assert p.predict(100) == pytest.approx(0.030)  # one size seen: no slope yet
    for tokens in (8, 16, 32, 64):
        p.add(tokens, 0.030 + 0.0005 * tokens)
    assert p.predict(128) == pytest.approx(0.030 + 0.0005 * 128, rel=0.05)
    q = PassTimes()
    q.add(8, 0.05)
    q.add(64, 0.03)  # noise: a bigger pass ran faster
    assert q.predict(200) == pytest.approx(0.04)  # flat, not falling


def test_pass_times_forget_old_passes():
    p = PassTimes(window=4)
    for _ in range(10):
        p.add(8, 1.0)
    for _ in range(4):
        p.add(8, 0.02)
    assert p.predict(8) == pytest.approx(0.02)


def running_at(adm: Admission, n: int, tpot: float, tokens_per_pass: int, now: float = 0.0):
    """``n`` requests running, each committing one token every ``tpot`` seconds."""
    for key in range(n):
        adm.arrive(key)
    assert adm.admit() == list(range(n)) or adm.running
    for step in range(3):
        for key in range(n):
            adm.on_commit(key, 1, now + step * tpot)
        adm.on_pass(tokens_per_pass, tpot)


def test_admission_without_a_target_admits_up_to_the_cap_in_arrival_order():
    adm = Admission(None, max_running=2)
    for key in "abc":
        adm.arrive(key)
    assert adm.admit() == ["a", "b"]
    adm.leave("a")
    assert adm.admit() == ["c"]


def test_requests_wait_while_the_running_ones_would_miss_their_target():
    adm = Admission(slo_tpot_s=0.050)
    # a compute-bound accelerator: each pass's time grows with its tokens
    for tokens in (10, 20, 40, 80):
        adm.passes.add(tokens, 0.001 * tokens)
    running_at(adm, 4, tpot=0.040, tokens_per_pass=40)
    assert adm.predicted_tpot(5) == pytest.approx(0.050, rel=0.02)
    assert adm.predicted_tpot(6) == pytest.approx(0.060, rel=0.02)
    for key in ("new1", "new2"):
        adm.arrive(key)
    assert adm.admit() == ["new1"]  # a fifth fits the target, a sixth would not
    assert list(adm.waiting) == ["new2"]
    adm.leave(0)
    assert adm.admit() == ["new2"]  # a place freed: first come, first served


def test_a_memory_bound_accelerator_admits_everyone():
    adm = Admission(slo_tpot_s=0.050)
    for tokens in (10, 20, 40, 80):
        adm.passes.add(tokens, 0.030)  # flat: more tokens cost nothing
    running_at(adm, 4, tpot=0.030, tokens_per_pass=40)
    for key in range(100, 140):
        adm.arrive(key)
    assert len(adm.admit()) == 40


def test_nobody_waits_forever_on_an_idle_accelerator_and_leaving_while_waiting_is_fine():
    adm = Admission(slo_tpot_s=0.015)
    for tokens in (10, 20):
        adm.passes.add(tokens, 0.001 * tokens)  # compute-bound: twice the tokens, twice the time
    running_at(adm, 1, tpot=0.010, tokens_per_pass=10)
    adm.arrive("x")
    adm.arrive("y")
    assert adm.admit() == []  # a second request would double the first one's TPOT
    adm.leave("y")  # gave up while waiting
    adm.leave(0)
    assert adm.admit() == ["x"]  # nothing runs: the first waiting request always starts
    with pytest.raises(ValueError):
        Admission(slo_tpot_s=0.0)


def test_a_target_no_request_can_meet_alone_does_not_serialise_requests():
    adm = Admission(slo_tpot_s=0.025)  # a 30 ms target model cannot meet 25 ms at all
    for tokens in (1, 2, 4, 8):
        adm.passes.add(tokens, 0.030 + 0.0001 * tokens)
    running_at(adm, 2, tpot=0.030, tokens_per_pass=2)
    for key in range(10, 16):
        adm.arrive(key)
    assert len(adm.admit()) == 6  # holding them back would only make them wait for nothing
