"""Synthetic models: deterministic, prefix-dependent like greedy drafts, acceptance as configured."""

from __future__ import annotations

import math
import random

import pytest

from wanspec.simulate.config import SimConfig
from wanspec.simulate.models import DraftCache, build_request, markov_matches
from wanspec.simulate.worlds import worlds


def test_sequences_are_a_function_of_seed_and_request():
    cfg = SimConfig(requests=3, max_tokens=40)
    a = [build_request(cfg, r, 8) for r in range(3)]
    b = [build_request(cfg, r, 8) for r in range(3)]
    assert [w.target for w in a] == [w.target for w in b]
    assert [w.match for w in a] == [w.match for w in b]
    assert a[0].target != a[1].target  # requests differ
    other = build_request(SimConfig(requests=3, max_tokens=40, seed=1), 0, 8)
    assert other.target != a[0].target
    assert all(w != t for world in a for w, t in zip(world.wrong, world.target))


def test_worlds_are_shared_and_independent_of_link_and_policy_parameters():
    cfg = SimConfig(requests=2, max_tokens=16)
    assert worlds(cfg) is worlds(cfg.with_values({"rtt": 99.0, "gamma": 7}))
    assert worlds(cfg) is not worlds(cfg.with_values({"alpha": 0.5}))


def test_draft_on_the_right_prefix_follows_the_match_model():
    w = build_request(SimConfig(alpha=0.5, max_tokens=64), 0, 4)
    cache = DraftCache()
    for pos in range(4, 60):
        # feed the whole correct prefix each time from 0 (cut to 0): prefix is right
        tok, ent, top, _, _ = w.draft(cache, 0, w.target[:pos])
        assert tok == (w.target[pos] if w.match[pos] else w.wrong[pos])
        assert ent == w.entropy[pos] and top == w.top[pos]


def test_draft_after_a_wrong_token_is_wrong_until_the_cache_is_cut():
    w = build_request(SimConfig(alpha=0.99, max_tokens=64), 0, 4)
    pos = next(p for p in range(4, 60) if w.match[p] and w.match[p + 1])
    cache = DraftCache()
    w.draft(cache, 0, w.target[:pos])
    bad = w.target[pos] + 1
    tok, ent, _, _, _ = w.draft(cache, pos, [bad])  # wrong token at pos: drafts for pos+1 are wrong
    assert tok == w.wrong[pos + 1] and ent == w.entropy_bad[pos + 1]
    tok = w.draft(cache, pos + 1, [tok])[0]  # still on the wrong prefix
    assert tok == w.wrong[pos + 2]
    tok = w.draft(cache, pos, [w.target[pos]])[0]  # cut before the wrong token: right again
    assert tok == w.target[pos + 1]


def test_two_draft_copies_agree():
    """The worker and the local copy see the same prefixes, so they propose the same tokens."""
    w = build_request(SimConfig(alpha=0.7, max_tokens=64), 0, 4)
    a, b = DraftCache(), DraftCache()
    seq = list(w.target[:4])
    w.draft(a, 0, seq[:3])  # (a holds the first 3 positions: each pass feeds the last token)
    for pos in range(4, 40):
        ta = w.draft(a, pos - 1, seq[pos - 1:])
        tb = w.draft(b, 0, seq)
        assert ta == tb
        seq.append(ta[0])


def test_iid_acceptance_rate_and_entropy_separation():
    cfg = SimConfig(alpha=0.8, separation=1.5, entropy_sd=0.3, max_tokens=20000)
    w = build_request(cfg, 0, 1)
    rate = sum(w.match) / len(w.match)
    assert rate == pytest.approx(0.8, abs=4 * math.sqrt(0.16 / len(w.match)))
    acc = [e for e, m in zip(w.entropy, w.match) if m]
    rej = [e for e, m in zip(w.entropy, w.match) if not m]
    assert sum(rej) / len(rej) - sum(acc) / len(acc) == pytest.approx(1.5, abs=0.05)
    no_signal = build_request(SimConfig(separation=0.0, max_tokens=20000), 0, 1)
    acc = [e for e, m in zip(no_signal.entropy, no_signal.match) if m]
    rej = [e for e, m in zip(no_signal.entropy, no_signal.match) if not m]
    assert sum(rej) / len(rej) == pytest.approx(sum(acc) / len(acc), abs=0.03)


@pytest.mark.parametrize("burst", [0.0, 0.5, 0.9])
def test_markov_model_keeps_alpha_and_sets_the_correlation(burst):
    xs = markov_matches(random.Random(4), 200_000, 0.7, burst)
    n = len(xs)
    mean = sum(xs) / n
    assert mean == pytest.approx(0.7, abs=0.01 + 0.02 * burst)
    cov = sum((a - mean) * (b - mean) for a, b in zip(xs, xs[1:])) / (n - 1)
    assert cov / (mean * (1 - mean)) == pytest.approx(burst, abs=0.02)
