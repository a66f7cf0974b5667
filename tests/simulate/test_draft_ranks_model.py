"""The synthetic draft's top-k structure: its alternatives, their ranks and probabilities, and the
per-lane draft caches a draft tree runs on (``DraftFor.cache`` / ``copy_from``)."""

from __future__ import annotations

import math

import pytest

from wanspec.core.actions import RunDraft, Site
from wanspec.core.worker import DraftFor
from wanspec.errors import WanspecError
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import RANKS_GREEDY, RANKS_SAMPLED, SimConfig
from wanspec.simulate.engine import worker_cache
from wanspec.simulate.models import NO_BAD, DraftCache, alt_probs, build_request


def _on_prefix(w, pos):
    """The draft's pass for ``pos`` on the committed prefix (a fresh cache fed it all)."""
    return w.draft(DraftCache(), 0, w.target[:pos])


@pytest.mark.parametrize("ranks", [RANKS_GREEDY, RANKS_SAMPLED, (0.2, 0.3, 0.1), (0.0, 0.0, 1.0)])
def test_rank_frequencies_of_rejections_are_the_configured_ones(ranks):
    cfg = SimConfig(alpha=0.5, max_tokens=40_000, rank2=ranks[0], rank3=ranks[1],
                    rank4=ranks[2])
    w = build_request(cfg, 0, 1)
    rejected = [k for k, m in zip(w.rank, w.match) if not m]
    assert all(k == 1 for k, m in zip(w.rank, w.match) if m)
    n = len(rejected)
    assert n > 15_000
    for k, p in ((2, ranks[0]), (3, ranks[1]), (4, ranks[2]), (0, 1 - sum(ranks))):
        freq = rejected.count(k) / n
        assert freq == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-9), k


def test_the_target_token_is_the_alternative_at_its_rank_and_only_there():
    w = build_request(SimConfig(alpha=0.6, max_tokens=400, vocab=32000), 0, 4)
    seen = set()
    for pos in range(4, 400):
        token, _, _, alts, probs = _on_prefix(w, pos)
        t, k = w.target[pos], w.rank[pos]
        assert len(alts) == len(probs) == 3 and len(set(alts)) == 3 and token not in alts
        assert w.wrong[pos] not in w.alts_off[pos] and t not in w.alts_off[pos]
        if w.match[pos]:
            assert k == 1 and token == t and t not in alts
        elif k == 0:
            assert token != t and t not in alts
        else:
            assert token != t and alts.index(t) == k - 2
        seen.add(k)
    assert seen == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("vocab", [64, 97, 101, 32000])
def test_alternatives_are_distinct_and_never_the_draft_token_in_small_vocabularies(vocab):
    w = build_request(SimConfig(alpha=0.3, max_tokens=300, vocab=vocab), 1, 4)
    for pos in range(4, 300):
        token, _, _, alts, _ = _on_prefix(w, pos)
        assert len(set(alts)) == len(alts) == 3
        assert token not in alts and token != w.target[pos] or w.match[pos]
        assert all(0 <= a < vocab for a in alts)
        assert w.target[pos] not in w.alts_off[pos]


def test_a_draft_off_the_prefix_never_offers_the_target_token():
    w = build_request(SimConfig(alpha=0.7, max_tokens=200), 0, 4)
    cache = DraftCache()
    w.draft(cache, 0, w.target[:10])
    seq = [*w.target[:10], w.target[10] + 1]  # a wrong token at 10
    for pos in range(11, 150):
        token, ent, top, alts, probs = w.draft(cache, pos - 1, seq[pos - 1:])
        assert token != w.target[pos] and w.target[pos] not in alts
        assert (ent, top, probs) == (w.entropy_bad[11], w.top_bad[11], w.alt_p_bad[11])
        seq.append(token)


def test_a_branch_from_the_right_alternative_is_back_on_the_prefix():
    w = build_request(SimConfig(alpha=0.5, max_tokens=400), 0, 4)
    pos = next(p for p in range(4, 390) if w.rank[p] == 3)
    main = DraftCache()
    token, _, _, alts, _ = w.draft(main, 0, w.target[:pos])
    w.draft(main, pos, [token])  # the main chain goes on from its own (wrong) token
    for alt in alts:
        branch = DraftCache()
        branch.copy_from(main, pos)  # the branch takes the shared prefix, then its token
        nxt = w.draft(branch, pos, [alt])
        if alt == w.target[pos]:
            assert nxt == _on_prefix(w, pos + 1)  # what a re-synchronised chain proposes
        else:
            assert nxt[0] == w.wrong[pos + 1] and w.target[pos + 1] not in nxt[3]


def test_alt_probs_decrease_stay_below_the_top_and_leave_mass():
    for top in (0.001, 0.05, 0.2, 0.5, 0.8, 0.99, 1.0):
        p = alt_probs(top)
        assert top >= p[0] >= p[1] >= p[2] >= 0
        assert top + sum(p) <= 1.0 + 1e-12
    assert alt_probs(0.99)[0] < 0.01 < alt_probs(0.3)[0]  # a sure draft has no runner-up
    w = build_request(SimConfig(max_tokens=50), 0, 4)
    assert w.alt_p == [alt_probs(t) for t in w.top]


def test_ranks_are_a_function_of_seed_request_and_the_rank_model():
    cfg = SimConfig(max_tokens=200)
    a, b = build_request(cfg, 2, 8), build_request(cfg, 2, 8)
    assert a.rank == b.rank and a.alts == b.alts
    assert build_request(cfg, 3, 8).rank != a.rank
    other = build_request(SimConfig(max_tokens=200, rank2=0.1, rank3=0.1, rank4=0.1), 2, 8)
    assert other.match == a.match and other.rank != a.rank  # only the ranks moved


@pytest.mark.parametrize("vocab", [64, 512, 32000])
def test_entropy_top_prob_and_alternatives_are_one_distributions(vocab):
    """Logits that are the simulated draft's distribution make the runtime's draft_choice report
    what the simulated pass reports: entropy, top probability, alternatives and theirs."""
    import torch

    from wanspec.sampling import draft_choice

    w = build_request(SimConfig(alpha=0.6, max_tokens=120, vocab=vocab, separation=2.0), 0, 4)
    cache = DraftCache()
    w.draft(cache, 0, w.target[:4])
    for pos in range(5, 120):
        token, ent, top, alts, probs = w.draft(cache, pos - 1, (w.target[pos - 1],))
        rest = (1.0 - top - sum(probs)) / (vocab - 4)
        logits = torch.full((vocab,), math.log(rest), dtype=torch.float64)
        logits[token] = math.log(top)
        for a, p in zip(alts, probs):
            logits[a] = math.log(p)
        c = draft_choice(logits, pos, SamplingParams())
        assert (c.token, c.alternatives) == (token, alts)
        assert c.entropy == pytest.approx(ent, rel=1e-9, abs=1e-12)
        assert c.top_prob == pytest.approx(top, rel=1e-9)
        assert c.alt_probs == pytest.approx(probs, rel=1e-9)


def test_the_synthetic_distribution_has_the_drawn_entropy_within_its_range():
    from wanspec.simulate.models import distribution_entropy, draft_distribution

    for vocab in (64, 32000):
        tops = []
        for h in (0.2, 0.5, 1.0, 1.5, 2.5, 3.5):
            top, exact = draft_distribution(h, vocab)
            assert exact == pytest.approx(h, abs=1e-4)
            assert exact == distribution_entropy(top, vocab)
            tops.append(top)
        assert tops == sorted(tops, reverse=True)  # flatter: a less sure top choice
    top, exact = draft_distribution(0.0, 64)  # below the range (its alternatives above the rest)
    assert 0.15 < exact < 0.2 and top < 1.0
    assert draft_distribution(50.0, 64)[1] < math.log(64)


def test_rank_probabilities_are_checked():
    with pytest.raises(WanspecError, match="rank2 \\+ rank3 \\+ rank4 must be <= 1"):
        SimConfig(rank2=0.8, rank3=0.3)
    with pytest.raises(WanspecError, match="rank4 must be"):
        SimConfig(rank4=-0.1)
    SimConfig(rank2=1.0, rank3=0.0, rank4=0.0)
    with pytest.raises(WanspecError, match="vocab must be >= 64"):
        SimConfig(vocab=63)


# ---- per-lane caches -------------------------------------------------------------------------
def test_fork_copy_keeps_a_wrong_token_before_the_start_and_drops_the_rest():
    w = build_request(SimConfig(alpha=0.9, max_tokens=100), 0, 4)
    src = DraftCache()
    w.draft(src, 0, [*w.target[:20], w.target[20] + 1, *w.target[21:30]])  # wrong at 20
    assert (src.bad, src.length) == (20, 30)
    fork = DraftCache()
    fork.copy_from(src, 20)  # the prefix before the wrong token: right
    assert (fork.bad, fork.length) == (NO_BAD, 20)
    fork.copy_from(src, 25)  # past it: the copy holds the wrong token too
    assert (fork.bad, fork.length) == (20, 25)
    assert src.bad == 20 and src.length == 30  # the source is untouched
    with pytest.raises(ValueError, match="cannot copy 31 positions"):
        fork.copy_from(src, 31)


def test_a_pass_may_not_feed_past_what_its_cache_holds():
    w = build_request(SimConfig(max_tokens=50), 0, 4)
    cache = DraftCache()
    with pytest.raises(ValueError, match="holds 0 positions"):
        w.draft(cache, 3, [w.target[3]])
    w.draft(cache, 0, w.target[:6])
    assert cache.length == 6
    w.draft(cache, 2, w.target[2:4])  # a cut, then a feed: it holds 4 now
    assert cache.length == 4


def _draft_for(cache: int, start: int, tokens, copy_from=None) -> DraftFor:
    return DraftFor(7, RunDraft(1, Site.WORKER, start, tuple(tokens)), SamplingParams(),
                    cache=cache, copy_from=copy_from)


def test_worker_caches_are_per_lane_number_and_a_fork_copies_its_parent():
    w = build_request(SimConfig(alpha=0.9, max_tokens=100), 0, 4)
    caches: dict[int, DraftCache] = {}
    main = worker_cache(caches, _draft_for(0, 0, w.target[:12]))
    w.draft(main, 0, [*w.target[:10], w.target[10] + 1, w.target[11]])  # wrong at 10
    assert set(caches) == {0} and main.length == 12
    # branch lane 1 forks at 10 with the target's token: its copy holds the right prefix
    a = _draft_for(1, 10, [w.target[10]], copy_from=0)
    branch = worker_cache(caches, a)
    assert set(caches) == {0, 1} and branch is not main
    assert (branch.bad, branch.length) == (NO_BAD, 10)
    assert w.draft(branch, 10, a.run.tokens) == _on_prefix(w, 11)
    # reusing lane 1's number for a new fork later on replaces its contents
    again = worker_cache(caches, _draft_for(1, 12, [w.target[12]], copy_from=0))
    assert again is branch and (branch.bad, branch.length) == (10, 12)
    # a lane that runs on without copying keeps its own state
    assert worker_cache(caches, _draft_for(1, 12, [w.target[12]])) is branch
    with pytest.raises(ValueError, match="never used"):
        worker_cache(caches, _draft_for(2, 5, [1], copy_from=3))
