"""Greedy losslessness of LocalEngine: sd == target-only == Hugging Face generate, exactly."""

from __future__ import annotations

import math

import pytest

from helpers import ScriptedLM, hf_greedy, sd_schedule
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine

N = 24
PROMPTS = {
    "text": "To be, or not to be",
    "one-token": [5],
    "ids": [120, 7, 7, 250, 33, 0, 91, 12],
}


def prompt_ids(lm, prompt):
    return lm.encode(prompt) if isinstance(prompt, str) else list(prompt)


@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_target_mode_equals_hf_generate(target, prompt):
    ids = prompt_ids(target, prompt)
    res = LocalEngine(target).generate(ids, mode="target", ignore_eos=True, max_tokens=N)
    assert res.token_ids == hf_greedy(target, ids, N)
    assert res.finish_reason == "max_tokens"
    assert res.prompt_tokens == len(ids)
    assert res.metrics["target_passes"] == N
    assert res.metrics["draft_passes"] == {"controller": 0, "worker": 0}


@pytest.mark.parametrize("gamma", [1, 4, 7])
@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_identical_drafter_accepts_everything(target, same_draft, prompt, gamma):
    ids = prompt_ids(target, prompt)
    ref = hf_greedy(target, ids, N)
    engine = LocalEngine(target, same_draft)
    sd = engine.generate(ids, mode="sd", gamma=gamma, ignore_eos=True, max_tokens=N)
    tgt = engine.generate(ids, mode="target", ignore_eos=True, max_tokens=N)
    assert sd.token_ids == ref == tgt.token_ids
    m = sd.metrics
    assert m["acceptance_rate"] == 1.0
    assert m["accepted_tokens"] == m["drafted_tokens"] > 0
    expected = sd_schedule(N, gamma)
    # the prefill, then one pass per round of gamma + 1 tokens (the last round may be shorter)
    assert m["target_passes"] == expected["target_passes"] == 1 + math.ceil((N - 1) / (gamma + 1))
    assert m["draft_passes"]["controller"] == expected["draft_passes"]
    assert m["verify_rounds"] == expected["rounds"]
    # every round commits all its drafts plus the bonus token
    assert m["mean_acceptance_length"] == (m["accepted_tokens"] + m["verify_rounds"]) / m["verify_rounds"]


@pytest.mark.parametrize("gamma", [2, 5])
@pytest.mark.parametrize("prompt", PROMPTS.values(), ids=PROMPTS.keys())
def test_unrelated_drafter_is_still_lossless(target, random_draft, prompt, gamma):
    ids = prompt_ids(target, prompt)
    ref = hf_greedy(target, ids, N)
    engine = LocalEngine(target, random_draft)
    sd = engine.generate(ids, mode="sd", gamma=gamma, ignore_eos=True, max_tokens=N)
    assert sd.token_ids == ref
    assert sd.token_ids == engine.generate(ids, mode="target", ignore_eos=True,
                                           max_tokens=N).token_ids
    m = sd.metrics
    assert m["drafted_tokens"] > 0
    assert m["accepted_tokens"] < m["drafted_tokens"] / 2  # few (usually no) drafts accepted
    assert m["committed_tokens"] == N


def test_near_drafter_is_lossless_with_partial_acceptance(target, near_draft):
    ids = prompt_ids(target, PROMPTS["text"])
    engine = LocalEngine(target, near_draft)
    sd = engine.generate(ids, mode="sd", gamma=4, ignore_eos=True, max_tokens=40)
    assert sd.token_ids == hf_greedy(target, ids, 40)
    assert 0 < sd.metrics["accepted_tokens"] < sd.metrics["drafted_tokens"]


@pytest.mark.parametrize("gamma, wrong_offsets", [
    (4, (3, 9, 10)),  # a mid-window rejection, then rejections at the window start, twice
    (3, (1, 2, 3, 4, 5)),  # a run of wrong drafts: nothing accepted for a while
    (6, (20,)),  # a single late error
    (1, (2, 5, 6)),
])
@pytest.mark.parametrize("prompt", [PROMPTS["text"], PROMPTS["one-token"]], ids=["text", "one"])
def test_oracle_drafter_partial_acceptance_and_rollback(target, prompt, gamma, wrong_offsets):
    ids = prompt_ids(target, prompt)
    L = len(ids)
    ref = hf_greedy(target, ids, N)
    oracle = ScriptedLM(ids + ref, wrong_positions={L + o for o in wrong_offsets},
                        tokenizer=target.tokenizer)
    try:
        sd = LocalEngine(target, oracle).generate(ids, mode="sd", gamma=gamma, ignore_eos=True,
                                                  max_tokens=N)
    finally:
        oracle.close()
    assert sd.token_ids == ref
    m = sd.metrics
    assert 0 < m["accepted_tokens"] < m["drafted_tokens"]
    expected = sd_schedule(N, gamma, wrong_offsets)
    assert m["target_passes"] == expected["target_passes"]
    assert m["draft_passes"]["controller"] == expected["draft_passes"] == len(oracle.calls)
    assert m["drafted_tokens"] == expected["drafted"]
    assert m["accepted_tokens"] == expected["accepted"]
    assert m["verify_rounds"] == expected["rounds"]
    # rollback: after each rejection at absolute position p, the draft's next pass starts at p
    # (its cache cut back to the accepted prefix) and feeds the target's correction
    full = ids + ref
    rejected_at = _rejections(full, oracle.wrong_positions, L, N, gamma)
    assert rejected_at
    for p in rejected_at:
        assert any(start == p and toks[0] == full[p] for start, toks in oracle.calls), p
    # every token the drafter was ever fed is either the true token or its own (wrong) proposal
    for start, toks in oracle.calls:
        for i, t in enumerate(toks):
            assert t in (full[start + i], oracle.predicted(start + i))


def _rejections(full, wrong_positions, L, n_out, gamma):
    """Absolute positions at which a verification rejected a draft and drafting goes on."""
    out, n = [], 1
    while n < n_out:
        g = min(gamma, n_out - n - 1)
        if g == 0:
            break
        k = 0
        while k < g and (L + n + k) not in wrong_positions:
            k += 1
        if k < g and n + k + 1 < n_out:
            out.append(L + n + k)
        n += k + 1
    return out


def test_catch_up_after_full_acceptance_is_one_multi_token_pass(target):
    ids = prompt_ids(target, PROMPTS["text"])
    L = len(ids)
    ref = hf_greedy(target, ids, 12)
    oracle = ScriptedLM(ids + ref, tokenizer=target.tokenizer)
    try:
        LocalEngine(target, oracle).generate(ids, mode="sd", gamma=3, ignore_eos=True,
                                             max_tokens=12)
    finally:
        oracle.close()
    full = ids + ref
    # round 1: prompt + first token in one pass, then two single-token passes
    assert oracle.calls[:3] == [(0, tuple(full[:L + 1])), (L + 1, (full[L + 1],)),
                                (L + 2, (full[L + 2],))]
    # round 2 starts by feeding the last accepted draft and the bonus token together
    assert oracle.calls[3] == (L + 3, (full[L + 3], full[L + 4]))


def test_streaming_callback_sees_exactly_the_output(target, near_draft):
    ids = prompt_ids(target, PROMPTS["ids"])
    chunks: list[tuple[int, ...]] = []
    res = LocalEngine(target, near_draft).generate(ids, mode="sd", ignore_eos=True, max_tokens=N,
                                                   on_tokens=chunks.append)
    assert [t for c in chunks for t in c] == res.token_ids
    assert len(chunks) == res.metrics["target_passes"]


def test_text_prompt_and_result_text(target, same_draft):
    res = LocalEngine(target, same_draft).generate("To be, or not", mode="sd", ignore_eos=True,
                                                   max_tokens=8)
    assert res.text == target.decode(res.token_ids)
    assert res.prompt_tokens == len(target.encode("To be, or not"))
    d = res.to_dict()
    assert d["token_ids"] == res.token_ids and d["mode"] == "sd" and d["timing"] == "measured"
    assert d["metrics"]["devices"]["controller"]["passes"] == (
        res.metrics["target_passes"] + res.metrics["draft_passes"]["controller"])


def test_engine_errors(target):
    with pytest.raises(WanspecError):
        LocalEngine(target).generate([1, 2], mode="sd", max_tokens=4)  # no draft
    with pytest.raises(WanspecError):
        LocalEngine(target).generate([], mode="target", max_tokens=4)
    with pytest.raises(ValueError):
        LocalEngine(target).generate([1], mode="bogus", max_tokens=4)


# ---- EOS and stop strings: every mode stops at the same token ----------------------------------


def test_eos_stops_every_mode_at_the_same_token(eos_pair, random_draft):
    t, d = eos_pair
    ids = t.encode("whether 'tis nobler")
    eos = t.tokenizer.eos_token_id
    free = hf_greedy(t, ids, N)
    assert eos in free[2:]  # the construction works: EOS comes, but not at once
    first = free.index(eos)
    for draft in (d, random_draft):
        engine = LocalEngine(t, draft)
        for mode in ("sd", "target"):
            res = engine.generate(ids, mode=mode, gamma=4, max_tokens=N)
            assert res.finish_reason == "eos"
            assert res.token_ids == free[:first + 1]
            ign = engine.generate(ids, mode=mode, gamma=4, max_tokens=N, ignore_eos=True)
            assert ign.token_ids == free and ign.finish_reason == "max_tokens"


def test_stop_string_stops_every_mode_at_the_same_token(target, same_draft, random_draft):
    ids = target.encode("To be, or not")
    free = hf_greedy(target, ids, N)
    # a stop string made of a later output token's text
    texts = [target.decode([t]) for t in free]
    j = next(i for i in range(4, N) if texts[i].strip().isalpha())
    stop = texts[j].strip()
    results = []
    for draft in (same_draft, random_draft):
        engine = LocalEngine(target, draft)
        for mode in ("sd", "target"):
            res = engine.generate(ids, mode=mode, gamma=5, max_tokens=N, ignore_eos=True,
                                  stop_strings=[stop])
            results.append(res.token_ids)
            assert res.finish_reason == "stop_string"
            assert stop in res.text
            assert stop not in target.decode(res.token_ids[:-1])
    assert all(r == results[0] for r in results)
    assert results[0] == free[:len(results[0])] and len(results[0]) <= j + 1


# ---- the shipped default pair ------------------------------------------------------------------


def _shipped_pair_present() -> bool:
    return (DEFAULT_TARGET / "config.json").is_file() and (DEFAULT_DRAFT / "config.json").is_file()


@pytest.mark.skipif(not _shipped_pair_present(),
                    reason=f"the shipped model pair is not in {DEFAULT_TARGET.parent} yet "
                           "(it is trained by scripts/train_default_pair.py)")
def test_shipped_pair_greedy_is_lossless():
    target = CausalLM(DEFAULT_TARGET, dtype="float32", device="cpu")
    draft = CausalLM(DEFAULT_DRAFT, dtype="float32", device="cpu")
    try:
        engine = LocalEngine(target, draft)
        for prompt in ("To be, or not to be", "The quick brown fox"):
            ids = target.encode(prompt) or [0]
            ref = hf_greedy(target, ids, 20)
            sd = engine.generate(ids, mode="sd", gamma=4, ignore_eos=True, max_tokens=20)
            tgt = engine.generate(ids, mode="target", ignore_eos=True, max_tokens=20)
            assert sd.token_ids == tgt.token_ids == ref
    finally:
        target.close()
        draft.close()
