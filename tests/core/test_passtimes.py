"""PassTimes: a device's pass duration against tokens fed, fitted from its own passes."""

from __future__ import annotations

import pytest

from wanspec.core.passtimes import PassTimes


def test_the_fit_recovers_a_line_and_predicts_along_it():
    p = PassTimes()
    assert p.fit() is None and p.predict(4) is None
    for tokens in (1, 2, 4, 8, 17):
        p.add(tokens, 0.0008 + 0.00025 * tokens)
    a, b = p.fit()
    assert a == pytest.approx(0.0008) and b == pytest.approx(0.00025)
    assert p.predict(40) == pytest.approx(0.0008 + 0.00025 * 40)


def test_one_pass_size_or_cheaper_bigger_passes_give_no_slope():
    p = PassTimes()
    for _ in range(5):
        p.add(3, 0.004)
    assert p.fit() == pytest.approx((0.004, 0.0))
    q = PassTimes()
    q.add(1, 0.005)
    q.add(10, 0.004)  # noise: a pass is never cheaper with more tokens
    assert q.fit()[1] == 0.0


def test_only_the_last_window_of_passes_counts_and_the_fit_follows_new_ones():
    p = PassTimes(window=4)
    for tokens in (1, 2, 3, 4):
        p.add(tokens, 0.001 * tokens)
    assert p.fit()[1] == pytest.approx(0.001)
    for tokens in (1, 2, 3, 4):  # the device got flat (e.g. it moved to an accelerator)
        p.add(tokens, 0.004)
    assert len(p.samples) == 4 and p.fit() == pytest.approx((0.004, 0.0))
