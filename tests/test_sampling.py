"""Sampling: the position-keyed sampler, processed distributions, and losslessness in law."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from wanspec.core.verify import accept_prefix
from wanspec.errors import WanspecError
from wanspec.sampling import (
    MAX_ALTERNATIVES,
    SamplingParams,
    choose_tokens,
    draft_choice,
    gumbel_noise,
    position_key,
    processed_logprobs,
)

LOGITS6 = torch.tensor([2.0, 1.2, 0.9, 0.3, -0.4, -1.5])


# ---- SamplingParams ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 0.0},
    {"top_p": 1.5}, {"top_p": -0.2}, {"seed": -1},
])
def test_params_reject_invalid_values(kwargs):
    with pytest.raises(WanspecError):
        SamplingParams(**kwargs)


def test_params_greedy_and_to_dict():
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=0.5).greedy
    p = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3)
    assert p.to_dict() == {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 3}


# ---- position-keyed randomness ----------------------------------------------------------------


def test_position_key_is_deterministic_64bit_and_spread():
    keys = {position_key(s, p) for s in range(4) for p in range(500)}
    assert len(keys) == 4 * 500
    assert all(0 <= k < 2**64 for k in keys)
    assert position_key(7, 123) == position_key(7, 123)
    # huge seeds are reduced mod 2**64 instead of overflowing
    assert 0 <= position_key(2**70 + 3, 5) < 2**64


def test_gumbel_noise_depends_only_on_seed_and_position():
    a = gumbel_noise(1, 42, 50)
    assert a.dtype == torch.float64 and a.shape == (50,)
    assert torch.equal(a, gumbel_noise(1, 42, 50))
    assert not torch.equal(a, gumbel_noise(1, 43, 50))
    assert not torch.equal(a, gumbel_noise(2, 42, 50))
    assert torch.isfinite(a).all()
    # the largest possible key is a valid generator seed
    assert torch.isfinite(gumbel_noise(2**64 - 1, 2**40, 8)).all()


# ---- processed distributions ------------------------------------------------------------------


def test_processed_logprobs_temperature_only_is_scaled_softmax():
    lp = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams(temperature=0.5))[0]
    ref = torch.log_softmax(LOGITS6.double() / 0.5, dim=-1)
    assert torch.allclose(lp, ref, rtol=0, atol=1e-12)


def test_processed_logprobs_greedy_uses_temperature_one():
    lp = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams())[0]
    assert torch.allclose(lp, torch.log_softmax(LOGITS6.double(), -1), rtol=0, atol=1e-12)


def test_processed_logprobs_top_k_keeps_exactly_the_k_largest():
    lp = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams(temperature=1.0, top_k=3))[0]
    kept = torch.isfinite(lp).nonzero().flatten().tolist()
    assert kept == [0, 1, 2]
    assert math.isclose(float(lp.exp().sum()), 1.0, rel_tol=1e-12)
    # top_k >= vocab disables it
    lp_all = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams(temperature=1.0, top_k=6))[0]
    assert torch.isfinite(lp_all).all()


def test_processed_logprobs_top_p_keeps_smallest_prefix_reaching_p():
    probs = torch.softmax(LOGITS6.double(), -1)
    cum = torch.cumsum(probs, -1)  # LOGITS6 is already sorted descending
    for top_p in (0.3, 0.5, 0.8, 0.95, 0.999):
        lp = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams(temperature=1.0, top_p=top_p))[0]
        kept = torch.isfinite(lp).nonzero().flatten().tolist()
        n_keep = int((cum < top_p).sum()) + 1  # the token that crosses top_p is kept
        assert kept == list(range(min(n_keep, 6))), top_p
    # a tiny top_p keeps the single most likely token
    lp = processed_logprobs(LOGITS6.unsqueeze(0), SamplingParams(temperature=1.0, top_p=1e-9))[0]
    assert torch.isfinite(lp).nonzero().flatten().tolist() == [0]


def test_processed_logprobs_top_p_respects_unsorted_order():
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    logits = LOGITS6[perm]
    params = SamplingParams(temperature=1.0, top_p=0.8)
    lp_sorted = processed_logprobs(LOGITS6.unsqueeze(0), params)[0]
    lp = processed_logprobs(logits.unsqueeze(0), params)[0]
    assert torch.equal(lp, lp_sorted[perm])


# ---- choose_tokens ----------------------------------------------------------------------------


def test_choose_tokens_greedy_is_argmax():
    logits = torch.randn(7, 30, generator=torch.Generator().manual_seed(0))
    assert choose_tokens(logits, range(7), SamplingParams()) == logits.argmax(-1).tolist()


def test_choose_tokens_needs_one_row_per_position():
    with pytest.raises(ValueError):
        choose_tokens(torch.zeros(3, 5), [0, 1], SamplingParams())


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, seed=0),
    SamplingParams(temperature=0.7, top_k=10, seed=9),
    SamplingParams(temperature=1.3, top_p=0.8, seed=12345),
])
def test_choose_tokens_deterministic_and_batch_independent(params):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=gen)
    positions = [3, 7, 9, 11, 20, 1000]
    together = choose_tokens(logits, positions, params)
    assert together == choose_tokens(logits, positions, params)
    alone = [choose_tokens(logits[i:i + 1], [p], params)[0] for i, p in enumerate(positions)]
    assert together == alone
    perm = [4, 0, 5, 2, 1, 3]
    shuffled = choose_tokens(logits[perm], [positions[i] for i in perm], params)
    assert shuffled == [together[i] for i in perm]
    sub = choose_tokens(logits[2:4], positions[2:4], params)
    assert sub == together[2:4]


def test_choose_tokens_depends_on_the_seed():
    logits = torch.zeros(64, 50)  # uniform: every seed/position draws afresh
    a = choose_tokens(logits, range(64), SamplingParams(temperature=1.0, seed=0))
    b = choose_tokens(logits, range(64), SamplingParams(temperature=1.0, seed=1))
    assert a != b
    assert sum(x != y for x, y in zip(a, b)) > 32


def test_choose_tokens_never_picks_a_filtered_token():
    logits = LOGITS6.expand(500, 6)
    toks = choose_tokens(logits, range(500), SamplingParams(temperature=5.0, top_k=2, seed=4))
    assert set(toks) == {0, 1}


# ---- draft_choice -----------------------------------------------------------------------------


def test_draft_choice_greedy_is_argmax_with_signals():
    c = draft_choice(LOGITS6, 17, SamplingParams())
    assert c.token == 0
    p = torch.softmax(LOGITS6.double(), -1)
    assert math.isclose(c.top_prob, float(p.max()), rel_tol=1e-12)
    assert math.isclose(c.entropy, float(-(p * p.log()).sum()), rel_tol=1e-12)


def test_draft_choice_uniform_entropy():
    c = draft_choice(torch.zeros(16), 0, SamplingParams(temperature=1.0))
    assert math.isclose(c.entropy, math.log(16), rel_tol=1e-12)
    assert math.isclose(c.top_prob, 1 / 16, rel_tol=1e-12)


def test_draft_choice_is_coupled_to_the_target_noise():
    """With the same distribution, the draft's sample equals the target's at every position."""
    gen = torch.Generator().manual_seed(2)
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=77)
    logits = torch.randn(40, 30, generator=gen)
    positions = list(range(100, 140))
    target = choose_tokens(logits, positions, params)
    draft = [draft_choice(logits[i], p, params).token for i, p in enumerate(positions)]
    assert draft == target


def test_draft_choice_greedy_alternatives_are_the_runner_up_logits():
    c = draft_choice(LOGITS6, 17, SamplingParams())
    order = torch.argsort(LOGITS6, descending=True).tolist()
    assert c.token == order[0]
    assert c.alternatives == tuple(order[1 : 1 + MAX_ALTERNATIVES])
    p = torch.softmax(LOGITS6.double(), -1)
    assert all(math.isclose(q, float(p[t]), rel_tol=1e-12)
               for t, q in zip(c.alternatives, c.alt_probs))


def test_draft_choice_sampled_alternatives_rank_by_the_noised_score():
    """When sampling, the alternatives are the runner-ups of log p + the position's noise: the
    target's next choices if its distribution were the draft's, nudged."""
    params = SamplingParams(temperature=0.9, seed=5)
    for position in range(30):
        c = draft_choice(LOGITS6, position, params)
        logp = processed_logprobs(LOGITS6.unsqueeze(0), params)[0]
        score = logp + gumbel_noise(params.seed, position, 6)
        order = torch.argsort(score, descending=True).tolist()
        assert c.token == order[0]
        assert c.alternatives == tuple(order[1 : 1 + MAX_ALTERNATIVES])
        assert all(math.isclose(q, math.exp(float(logp[t])), rel_tol=1e-12)
                   for t, q in zip(c.alternatives, c.alt_probs))


def test_draft_choice_alternatives_skip_filtered_tokens():
    params = SamplingParams(temperature=1.0, top_k=2, seed=3)
    for position in range(20):
        c = draft_choice(LOGITS6, position, params)
        assert len(c.alternatives) == 1  # top-k 2: the chosen token and one other survive
        assert {c.token, *c.alternatives} == set(torch.topk(LOGITS6, 2).indices.tolist())
        assert c.alt_probs[0] > 0
    tiny = draft_choice(torch.tensor([1.0, 3.0]), 0, SamplingParams())  # vocabulary of 2
    assert (tiny.token, tiny.alternatives) == (1, (0,))
    masked = draft_choice(torch.tensor([1.0, float("-inf"), 3.0, float("-inf")]), 0,
                          SamplingParams())
    assert (masked.token, masked.alternatives) == (2, (0,))


# ---- distributions (chi-square; fixed seeds, so deterministic) --------------------------------

N_SAMPLES = 20000
SETTINGS = [
    SamplingParams(temperature=1.0, seed=0),
    SamplingParams(temperature=0.6, top_k=4, seed=1),
    SamplingParams(temperature=1.4, top_p=0.85, seed=2),
    SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=3),
]


def _check_distribution(tokens: list[int], probs: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(tokens), minlength=probs.numel()).double()
    kept = probs > 0
    assert counts[~kept].sum() == 0, "a filtered token was sampled"
    n = counts.sum()
    res = chisquare(counts[kept].numpy(), (probs[kept] * n).numpy())
    return float(res.pvalue)


@pytest.mark.parametrize("params", SETTINGS, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}")
def test_choose_tokens_samples_the_processed_distribution(params):
    probs = processed_logprobs(LOGITS6.unsqueeze(0), params)[0].exp()
    toks = choose_tokens(LOGITS6.expand(N_SAMPLES, 6), range(N_SAMPLES), params)
    assert _check_distribution(toks, probs) > 1e-3


def test_chi_square_has_power_against_a_wrong_distribution():
    """Sanity check of the method: samples from another distribution are rejected."""
    params = SamplingParams(temperature=1.0, seed=0)
    wrong = processed_logprobs((LOGITS6 * 0.8).unsqueeze(0), params)[0].exp()
    toks = choose_tokens(LOGITS6.expand(N_SAMPLES, 6), range(N_SAMPLES), params)
    assert _check_distribution(toks, wrong) < 1e-3


DRAFT6 = torch.tensor([-0.4, 0.3, 0.9, 2.0, 1.2, -1.5])  # same support under top-k 5, other order


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, seed=10),
    SamplingParams(temperature=0.8, top_k=5, seed=11),
    SamplingParams(temperature=1.2, top_k=5, top_p=0.9, seed=12),
], ids=["plain", "topk", "topk-topp"])
def test_speculative_path_commits_the_target_distribution(params):
    """Simulated SD rounds (gamma 3) with a different draft distribution: the committed tokens
    follow the target's processed distribution, and every one equals the target's own choice.

    The target's choices are computed once for all positions (``choose_tokens`` is
    batch-independent, tested above); the draft's proposals are memoised per position (they are
    position-keyed too), which keeps the simulation fast.
    """
    gamma, n_target = 3, 10000
    t_probs = processed_logprobs(LOGITS6.unsqueeze(0), params)[0].exp()
    n_pos = n_target + gamma + 1
    target_choice = choose_tokens(LOGITS6.expand(n_pos, 6), range(n_pos), params)
    draft_memo: dict[int, int] = {}

    def propose(position: int) -> int:
        if position not in draft_memo:
            draft_memo[position] = draft_choice(DRAFT6, position, params).token
        return draft_memo[position]

    committed: list[int] = []
    drafted = accepted = 0
    first_drafts: list[int] = []
    pos = 0
    while pos < n_target:
        drafts = [propose(pos + i) for i in range(gamma)]
        first_drafts.append(drafts[0])
        choices = target_choice[pos:pos + gamma + 1]
        k, nxt = accept_prefix(drafts, choices)
        new = drafts[:k] + [nxt]
        drafted += gamma
        accepted += k
        committed.extend(new)
        pos += len(new)
    committed = committed[:n_target]
    assert 0 < accepted < drafted, "the draft must be partly accepted for the test to mean much"
    # every committed token is the target's own position-keyed choice
    assert committed == target_choice[:n_target]
    assert _check_distribution(committed, t_probs) > 1e-3
    # ...whereas the proposals themselves follow the draft's, visibly different, distribution
    d_counts = torch.bincount(torch.tensor(first_drafts), minlength=6).double()
    if not (d_counts[t_probs == 0] > 0).any():
        assert _check_distribution(first_drafts, t_probs) < 1e-3
