"""Seeded sampling through the engine: speculative decoding reproduces target-only exactly."""

from __future__ import annotations

import pytest

from helpers import ScriptedLM
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams

N = 24
SETTINGS = [
    SamplingParams(temperature=1.0, seed=0),
    SamplingParams(temperature=0.7, top_k=20, seed=1),
    SamplingParams(temperature=1.3, top_p=0.9, seed=2),
    SamplingParams(temperature=0.5, top_k=8, top_p=0.8, seed=123456789),
    SamplingParams(temperature=2.0, seed=2**63 + 7),
]
IDS = lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}-s{p.seed}"  # noqa: E731


@pytest.fixture(scope="module")
def prompt(target):
    return target.encode("whether 'tis nobler")


@pytest.mark.parametrize("sampling", SETTINGS, ids=IDS)
def test_sampled_sd_equals_target_for_every_drafter(target, same_draft, random_draft, near_draft,
                                                    prompt, sampling):
    ref = LocalEngine(target).generate(prompt, mode="target", ignore_eos=True, max_tokens=N,
                                       sampling=sampling)
    assert len(ref.token_ids) == N
    oracle = ScriptedLM(prompt + ref.token_ids, wrong_positions={len(prompt) + 4},
                        tokenizer=target.tokenizer)
    try:
        for draft in (same_draft, random_draft, near_draft, oracle):
            for gamma in (1, 4):
                sd = LocalEngine(target, draft).generate(prompt, mode="sd", gamma=gamma,
                                                         ignore_eos=True, max_tokens=N,
                                                         sampling=sampling)
                assert sd.token_ids == ref.token_ids, (draft.name, gamma)
    finally:
        oracle.close()


def test_identical_drafter_is_always_accepted_when_sampling(target, same_draft, prompt):
    """Coupled sampling: the same distribution and the same noise give the same token."""
    sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=5)
    sd = LocalEngine(target, same_draft).generate(prompt, mode="sd", gamma=4, ignore_eos=True,
                                                  max_tokens=N, sampling=sampling)
    assert sd.metrics["acceptance_rate"] == 1.0


def test_near_drafter_partial_acceptance_when_sampling(target, near_draft, prompt):
    sampling = SamplingParams(temperature=1.0, seed=9)
    sd = LocalEngine(target, near_draft).generate(prompt, mode="sd", gamma=4, ignore_eos=True,
                                                  max_tokens=40, sampling=sampling)
    assert 0 < sd.metrics["accepted_tokens"] < sd.metrics["drafted_tokens"]


def test_same_seed_same_output_and_seeds_differ(target, near_draft, prompt):
    engine = LocalEngine(target, near_draft)
    outs = {}
    for seed in range(4):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        a = engine.generate(prompt, mode="sd", ignore_eos=True, max_tokens=N, sampling=sampling)
        b = engine.generate(prompt, mode="sd", ignore_eos=True, max_tokens=N, sampling=sampling)
        assert a.token_ids == b.token_ids
        outs[seed] = tuple(a.token_ids)
    assert len(set(outs.values())) == 4  # different seeds, different samples
    greedy = engine.generate(prompt, mode="target", ignore_eos=True, max_tokens=N)
    assert tuple(greedy.token_ids) not in outs.values()


def test_top_k_one_is_greedy(target, random_draft, prompt):
    engine = LocalEngine(target, random_draft)
    greedy = engine.generate(prompt, mode="target", ignore_eos=True, max_tokens=N)
    for mode in ("sd", "target"):
        res = engine.generate(prompt, mode=mode, ignore_eos=True, max_tokens=N,
                              sampling=SamplingParams(temperature=1.0, top_k=1, seed=3))
        assert res.token_ids == greedy.token_ids
