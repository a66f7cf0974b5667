"""The speed-ups of the policy code return exactly (bit for bit) what the plain formulas return.

The simulator's results must not move when its hot paths get faster, so each helper is checked
against the straightforward formula it replaces, on grids and on random inputs, with ``==``.
"""

import itertools
import random

import pytest

from wanspec.core.calibration import EntropyCalibration
from wanspec.core.chain import DraftToken
from wanspec.core.policy import (
    Decision,
    Kind,
    View,
    decide_adaptive,
    expected_run,
    expected_tokens,
    extend_run,
    optimal_gamma,
    run_prefixes,
)

# ---- the formulas as they were written before (the reference) -------------------------------


def reference_optimal_gamma(alpha, target_s, draft_s, per_token_s=0.0, max_gamma=16):
    def rate(g):
        return expected_tokens(alpha, g) / (g * draft_s + target_s + per_token_s * g)

    return max(range(1, max_gamma + 1), key=rate)


def reference_decide_adaptive(v: View, busy_pass_weight: float = 1.0) -> Decision:
    k = len(v.remote)
    ps = list(v.remote_accept_p[:k]) if len(v.remote_accept_p) >= k else [v.alpha] * k
    a = min(max(v.alpha, 0.0), 0.999)

    def tv(w):
        return v.target_pass_s + v.verify_per_token_s * max(w, 0)

    if v.local > 0:
        return Decision(Kind.LOCAL_DRAFT if k + v.local < v.local_gamma else Kind.VERIFY_LOCAL)
    if not v.worker_ok and not v.has_local_draft:
        return Decision(Kind.PLAIN)
    options = []
    if v.worker_ok and k > 0:
        best_w = max(range(1, k + 1), key=lambda w: expected_run(ps[:w]) / tv(w))
        options.append((tv(best_w) / expected_run(ps[:best_w]),
                        Decision(Kind.VERIFY_REMOTE, window=best_w)))
    options.append((tv(0), Decision(Kind.PLAIN)))
    if v.has_local_draft:
        g = max(v.local_gamma, k + 1)
        extra = g - k
        cost = extra * v.local_draft_s * (1.0 + busy_pass_weight) + tv(g)
        options.append((cost / expected_run(ps + [a] * extra), Decision(Kind.LOCAL_DRAFT)))
    if v.worker_ok and v.expect_remote_by is not None and v.now < v.expect_remote_by:
        g = max(v.gamma, k + 1)
        wait = v.expect_remote_by - v.now
        options.append(((wait + tv(g)) / expected_run(ps + [a] * (g - k)),
                        Decision(Kind.WAIT, until=v.expect_remote_by)))
    return min(options, key=lambda o: o[0])[1]


# ---- run_prefixes / extend_run ----------------------------------------------------------------


def random_ps(rng: random.Random, n: int) -> list[float]:
    return [rng.choice([0.0, 1.0, 0.999, rng.random()]) for _ in range(n)]


def test_run_prefixes_equal_expected_run_of_every_prefix():
    rng = random.Random(1)
    for n in range(0, 12):
        for _ in range(50):
            ps = random_ps(rng, n)
            totals, run = run_prefixes(ps)
            assert totals == [expected_run(ps[:w]) for w in range(n + 1)]
            prod = 1.0
            for p in ps:
                prod *= p
            assert run == prod


def test_extend_run_equals_expected_run_of_the_extended_list():
    rng = random.Random(2)
    for n, extra in itertools.product(range(0, 9), range(0, 9)):
        for _ in range(20):
            ps = random_ps(rng, n)
            a = rng.random()
            totals, run = run_prefixes(tuple(ps))
            assert extend_run(totals[n], run, a, extra) == expected_run(ps + [a] * extra)


# ---- optimal_gamma ----------------------------------------------------------------------------


ALPHAS = [-0.5, 0.0, 1e-9, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999999, 1.0, 1.5]
TARGETS = [0.0, 0.005, 0.03, 0.1, 1.0]
DRAFTS = [1e-4, 0.001, 0.004, 0.02, 0.1]
PER_TOKEN = [0.0, 0.0005, 0.002, 0.05]


@pytest.mark.parametrize("max_gamma", [1, 2, 8, 16])
def test_optimal_gamma_equals_the_plain_argmax_on_a_grid(max_gamma):
    for alpha, t, d, pt in itertools.product(ALPHAS, TARGETS, DRAFTS, PER_TOKEN):
        assert optimal_gamma(alpha, t, d, pt, max_gamma=max_gamma) == \
            reference_optimal_gamma(alpha, t, d, pt, max_gamma=max_gamma)


def test_optimal_gamma_equals_the_plain_argmax_on_random_estimates():
    rng = random.Random(3)
    for _ in range(3000):
        args = (rng.random(), rng.uniform(0.001, 0.2), rng.uniform(1e-4, 0.05),
                rng.choice([0.0, rng.uniform(0, 0.01)]))
        g = rng.randint(1, 20)
        assert optimal_gamma(*args, max_gamma=g) == reference_optimal_gamma(*args, max_gamma=g)
        assert optimal_gamma(*args, max_gamma=g) == optimal_gamma(*args, max_gamma=g)  # memo


def test_optimal_gamma_refuses_an_empty_range():
    with pytest.raises(ValueError):
        optimal_gamma(0.8, 0.03, 0.004, max_gamma=0)


# ---- decide_adaptive --------------------------------------------------------------------------


def random_view(rng: random.Random) -> View:
    k = rng.randint(0, 9)
    remote = [DraftToken(rng.randint(0, 99), rng.uniform(0, 3), 0.5) for _ in range(k)]
    if rng.random() < 0.2:
        accept_p: tuple[float, ...] = ()
    else:
        accept_p = tuple(random_ps(rng, k + rng.choice([0, 0, 2])))
    now = rng.uniform(0, 10)
    return View(
        now=now, gamma=rng.randint(1, 8), remote=remote,
        local=rng.choice([0, 0, 0, 1, 3]), chain_live=rng.random() < 0.8,
        chain_behind=rng.randint(0, 2), worker_ok=rng.random() < 0.9,
        has_local_draft=rng.random() < 0.8,
        expect_remote_by=rng.choice([None, now - 0.01, now + rng.uniform(0, 0.2)]),
        entropy_threshold=1.0, alpha=rng.choice([0.0, 1.0, rng.random()]),
        target_pass_s=rng.uniform(0.005, 0.1), remote_accept_p=accept_p,
        verify_per_token_s=rng.choice([0.0, rng.uniform(0, 0.005)]),
        local_draft_s=rng.uniform(0.001, 0.03), local_gamma=rng.randint(1, 12))


def test_decide_adaptive_equals_the_quadratic_reference():
    rng = random.Random(4)
    for _ in range(20000):
        v = random_view(rng)
        w = rng.choice([0.0, 1.0, 2.5, rng.uniform(0, 10)])
        assert decide_adaptive(v, w) == reference_decide_adaptive(v, w)


# ---- calibration ------------------------------------------------------------------------------


def test_p_accepts_equals_p_accept_as_the_counts_change():
    rng = random.Random(5)
    cal = EntropyCalibration()
    probes = [0.0, 0.1, 0.1000001, 0.3, 0.75, 1.2, 2.0, 2.9, 3.0, 5.0, *[rng.uniform(0, 4) for _ in range(30)]]
    for step in range(400):
        assert cal.p_accepts(probes) == tuple(cal.p_accept(e) for e in probes)
        assert cal.p_accepts(probes) == tuple(cal.p_accept(e) for e in probes)  # cached table
        e = rng.uniform(0, 4)
        cal.update(e, rng.random() < 1.0 / (1.0 + e))
    assert cal.p_accepts([]) == ()


def test_view_field_order_is_the_one_the_controller_builds_it_with():
    # ControllerCore._schedule builds View positionally (much cheaper than keywords): a change
    # of View's fields must be mirrored there
    import dataclasses

    assert [f.name for f in dataclasses.fields(View)] == [
        "now", "gamma", "remote", "local", "chain_live", "chain_behind", "worker_ok",
        "has_local_draft", "expect_remote_by", "entropy_threshold", "alpha", "target_pass_s",
        "remote_accept_p", "verify_per_token_s", "local_draft_s", "local_gamma"]
