"""``emulate --record`` ranks the target's token among a rejected draft's choices."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import wanspec.emulate.record as record
from wanspec.emulate.record import draft_ranking, record_request, target_rank
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams, draft_choice

PROMPT = "To be, or not to be, that is"


@pytest.mark.parametrize("sampling", [SamplingParams(),
                                      SamplingParams(temperature=1.0, seed=3),
                                      SamplingParams(temperature=0.9, top_k=40, seed=11)])
def test_each_rejection_gets_the_rank_a_draft_on_that_prefix_gives_the_target_token(
        target, near_draft, sampling):
    res = LocalEngine(target).generate(PROMPT, mode="target", max_tokens=40, sampling=sampling,
                                       ignore_eos=True)
    prompt = target.encode(PROMPT)
    rec = record_request(near_draft, prompt, res.token_ids, sampling)
    seq = [*prompt, *res.token_ids]
    rejected = [j for j, (ok, _) in rec.drafts.items() if not ok]
    assert rejected and sorted(rec.ranks) == sorted(rejected)
    for j in rejected:  # a separate pass on each committed prefix
        row = near_draft.forward(near_draft.new_cache(), 0, seq[:j])[-1]
        token = draft_choice(row, j, sampling).token
        tokens, probs = draft_ranking(row, j, sampling)
        assert tokens[0] == token
        if sampling.greedy:  # by logits, so by probability too
            assert probs == sorted(probs, reverse=True)
        assert rec.ranks[j] == target_rank(tokens, seq[j])
    assert set(rec.ranks.values()) <= {0, 2, 3, 4}
    assert any(k >= 2 for k in rec.ranks.values())


def test_greedy_ranking_is_by_logits_and_sampled_ranking_skips_filtered_tokens():
    import torch

    row = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0, 2.5])
    assert draft_ranking(row, 5, SamplingParams())[0] == [1, 5, 3, 2]
    only_two = SamplingParams(temperature=1.0, top_k=2, seed=0)
    tokens, probs = draft_ranking(row, 5, only_two)
    assert sorted(tokens) == [1, 5] and sum(probs) == pytest.approx(1.0)
    assert target_rank([4, 2, 9], 9) == 3 and target_rank([4, 2, 9], 7) == 0


def test_the_draft_choices_alternatives_are_used_when_the_runtime_provides_them(
        target, random_draft, monkeypatch):
    """Once ``draft_choice`` reports ``alternatives`` (DraftDone's), the recorder ranks by them."""

    @dataclass
    class WithAlternatives:
        token: int
        entropy: float
        top_prob: float
        alternatives: tuple[int, ...]

    def fake_choice(logits, position, params):
        c = draft_choice(logits, position, params)
        return WithAlternatives(c.token, c.entropy, c.top_prob, (position % 7, 1, 2))

    res = LocalEngine(target).generate(PROMPT, mode="target", max_tokens=30, ignore_eos=True)
    prompt = target.encode(PROMPT)
    monkeypatch.setattr(record, "draft_choice", fake_choice)
    rec = record_request(random_draft, prompt, res.token_ids, SamplingParams())
    seq = [*prompt, *res.token_ids]
    assert rec.ranks
    for j, rank in rec.ranks.items():
        assert rank == target_rank((-1, j % 7, 1, 2), seq[j])
