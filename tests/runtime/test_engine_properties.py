"""Property-based losslessness: for any prompt, gamma, budget, drafter and sampling settings,
speculative decoding outputs exactly what target-only decoding outputs."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import ScriptedLM
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams

VOCAB = 300  # tiny_tokenizer()'s size, the tiny models' vocabulary

prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)
drafters = st.sampled_from(["same", "random", "near", "oracle"])
PROFILE = settings(max_examples=25, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


def _drafter(kind, target, fixtures, prompt, reference, wrong_offsets):
    if kind == "oracle":
        return ScriptedLM(list(prompt) + reference,
                          wrong_positions={len(prompt) + o for o in wrong_offsets},
                          tokenizer=target.tokenizer)
    return fixtures[kind]


def _check(target, draft, prompt, gamma, max_tokens, sampling, ref):
    sd = LocalEngine(target, draft).generate(prompt, mode="sd", gamma=gamma,
                                             max_tokens=max_tokens, ignore_eos=True,
                                             sampling=sampling)
    assert sd.token_ids == ref.token_ids
    assert sd.finish_reason == ref.finish_reason == "max_tokens"
    assert len(sd.token_ids) == max_tokens
    m = sd.metrics
    assert m["committed_tokens"] == len(sd.token_ids)
    assert 0 <= m["accepted_tokens"] <= m["drafted_tokens"]
    assert m["target_passes"] <= max_tokens
    return sd


@PROFILE
@given(prompt=prompts, gamma=st.integers(1, 8), max_tokens=st.integers(1, 30), kind=drafters,
       wrong=st.sets(st.integers(0, 29), max_size=6))
def test_greedy_sd_equals_target(target, same_draft, random_draft, near_draft, prompt, gamma,
                                 max_tokens, kind, wrong):
    fixtures = {"same": same_draft, "random": random_draft, "near": near_draft}
    ref = LocalEngine(target).generate(prompt, mode="target", max_tokens=max_tokens,
                                       ignore_eos=True)
    assert len(ref.token_ids) <= max_tokens
    draft = _drafter(kind, target, fixtures, prompt, ref.token_ids, wrong)
    try:
        sd = _check(target, draft, prompt, gamma, max_tokens, None, ref)
    finally:
        if kind == "oracle":
            draft.close()
    if kind == "same" or (kind == "oracle" and not wrong):
        assert sd.metrics["accepted_tokens"] == sd.metrics["drafted_tokens"]


@PROFILE
@given(prompt=prompts, gamma=st.integers(1, 8), max_tokens=st.integers(1, 30), kind=drafters,
       wrong=st.sets(st.integers(0, 29), max_size=6),
       temperature=st.sampled_from([0.3, 0.7, 1.0, 1.5]),
       top_k=st.sampled_from([0, 1, 5, 50]), top_p=st.sampled_from([1.0, 0.9, 0.5]),
       seed=st.integers(0, 2**64))
def test_sampled_sd_equals_target(target, same_draft, random_draft, near_draft, prompt, gamma,
                                  max_tokens, kind, wrong, temperature, top_k, top_p, seed):
    fixtures = {"same": same_draft, "random": random_draft, "near": near_draft}
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    ref = LocalEngine(target).generate(prompt, mode="target", max_tokens=max_tokens,
                                       ignore_eos=True, sampling=sampling)
    draft = _drafter(kind, target, fixtures, prompt, ref.token_ids, wrong)
    try:
        _check(target, draft, prompt, gamma, max_tokens, sampling, ref)
    finally:
        if kind == "oracle":
            draft.close()


@PROFILE
@given(prompt=prompts, gamma=st.integers(1, 8), max_tokens=st.integers(1, 30),
       use_random=st.booleans(), ignore_eos=st.booleans(),
       temperature=st.sampled_from([0.0, 0.8]), seed=st.integers(0, 1000))
def test_eos_heavy_sd_equals_target(eos_pair, random_draft, prompt, gamma, max_tokens, use_random,
                                    ignore_eos, temperature, seed):
    """With EOS frequent and not ignored, both modes stop at the very same EOS token."""
    t, same = eos_pair
    draft = random_draft if use_random else same
    sampling = SamplingParams(temperature=temperature, seed=seed)
    kw = dict(max_tokens=max_tokens, ignore_eos=ignore_eos, sampling=sampling)
    ref = LocalEngine(t).generate(prompt, mode="target", **kw)
    sd = LocalEngine(t, draft).generate(prompt, mode="sd", gamma=gamma, **kw)
    assert sd.token_ids == ref.token_ids
    assert sd.finish_reason == ref.finish_reason
    event(f"finish: {sd.finish_reason}")
    assert 1 <= len(sd.token_ids) <= max_tokens
    eos = t.tokenizer.eos_token_id
    if sd.finish_reason == "eos":
        assert not ignore_eos and sd.token_ids[-1] == eos and eos not in sd.token_ids[:-1]
    else:
        assert len(sd.token_ids) == max_tokens
        assert ignore_eos or eos not in sd.token_ids
