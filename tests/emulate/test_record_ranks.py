"""``emulate --record`` ranks the target's token among a rejected draft's choices, and records
the draft's probabilities of its token and alternatives (what a draft tree branches by), after
a miss what the draft proposes as it goes on from its own wrong token, and after each wrong
alternative what it proposes going on from that (a tree's branch)."""

from __future__ import annotations

import pytest

from wanspec.emulate.record import record_request, target_rank
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams, draft_choice
from wanspec.simulate.trace import AFTER_ALTERNATIVE_DEPTH, AFTER_MISS_DEPTH

PROMPT = "To be, or not to be, that is"


@pytest.mark.parametrize("sampling", [SamplingParams(),
                                      SamplingParams(temperature=1.0, seed=3),
                                      SamplingParams(temperature=0.9, top_k=40, seed=11)])
def test_each_position_gets_what_a_draft_on_that_prefix_ranks_and_weighs(
        target, near_draft, sampling):
    res = LocalEngine(target).generate(PROMPT, mode="target", max_tokens=40, sampling=sampling,
                                       ignore_eos=True)
    prompt = target.encode(PROMPT)
    rec = record_request(near_draft, prompt, res.token_ids, sampling)
    seq = [*prompt, *res.token_ids]
    rejected = [j for j, (ok, _) in rec.drafts.items() if not ok]
    assert rejected and sorted(rec.ranks) == sorted(rejected)
    assert sorted(rec.probs) == sorted(rec.drafts)
    for j in rec.drafts:  # a separate pass on each committed prefix
        row = near_draft.forward(near_draft.new_cache(), 0, seq[:j])[-1]
        c = draft_choice(row, j, sampling)
        assert rec.probs[j] == pytest.approx((c.top_prob, *c.alt_probs), abs=2e-6)
        if j in rec.ranks:
            assert rec.ranks[j] == target_rank((c.token, *c.alternatives), seq[j])
    assert set(rec.ranks.values()) <= {0, 2, 3, 4}
    assert any(k >= 2 for k in rec.ranks.values())
    # after a miss: the probabilities of the draft's next proposal on its own wrong token
    misses = [j for j in rejected if j + 1 < len(seq)]
    assert sorted(rec.probs_after_miss) == misses
    for j in misses:
        wrong = draft_choice(near_draft.forward(near_draft.new_cache(), 0, seq[:j])[-1], j,
                             sampling).token
        chain = [*seq[:j], wrong]
        row = near_draft.forward(near_draft.new_cache(), 0, chain)[-1]
        c = draft_choice(row, j + 1, sampling)
        assert rec.probs_after_miss[j] == pytest.approx((c.top_prob, *c.alt_probs), abs=2e-6)
        # and as it goes on from there, each proposal fed back (what the worker's chain does)
        further = rec.further_after_miss[j]
        assert len(further) == AFTER_MISS_DEPTH
        for k, step in enumerate(further, start=2):
            chain.append(c.token)
            c = draft_choice(near_draft.forward(near_draft.new_cache(), 0, chain)[-1], j + k,
                             sampling)
            assert step[0] == pytest.approx(c.entropy, abs=1e-4)
            assert step[1:] == pytest.approx((c.top_prob, *c.alt_probs), abs=2e-6)
    # from each alternative that is not the target's token (recorded in batched passes)
    for j in list(rec.drafts)[:-1]:
        c = draft_choice(near_draft.forward(near_draft.new_cache(), 0, seq[:j])[-1], j, sampling)
        wrong = [i for i, a in enumerate(c.alternatives) if a != seq[j]]
        assert sorted(i for p, i in rec.after_alternative if p == j) == wrong
        if j % 4:
            continue  # (every fourth position checked step by step: a pass each)
        for i in wrong:
            chain = [*seq[:j], c.alternatives[i]]
            steps = rec.after_alternative[(j, i)]
            assert len(steps) == AFTER_ALTERNATIVE_DEPTH
            for k, step in enumerate(steps, start=1):
                d = draft_choice(near_draft.forward(near_draft.new_cache(), 0, chain)[-1], j + k,
                                 sampling)
                assert step[0] == pytest.approx(d.entropy, abs=1e-4)
                assert step[1:] == pytest.approx((d.top_prob, *d.alt_probs), abs=1e-4)
                chain.append(d.token)
    assert not any(p == len(seq) - 1 for p, _ in rec.after_alternative)  # nothing follows it


def test_target_rank():
    assert target_rank([4, 2, 9], 9) == 3 and target_rank([4, 2, 9], 7) == 0
    assert target_rank([4, 2, 9], 4) == 1
