"""Exact mode: a position's logits are bit-identical whatever pass computes it."""

from __future__ import annotations

import random

import pytest
import torch

from helpers import tiny_llama
from wanspec.errors import ModelLoadError
from wanspec.models import exact as exact_mod
from wanspec.models.backend import Feed


def odd_llama(exact: bool):
    """Sizes that are not multiples of any vector width: 3 heads of 16, 1 kv head, MLP of 100."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import tiny_tokenizer
    from wanspec.models.backend import CausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(23)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=48, intermediate_size=100, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=200))
    return CausalLM.from_model(model, tok, name="odd", exact=exact)


@pytest.fixture(scope="module", params=["gqa", "odd sizes"])
def exact_lm(request):
    if request.param == "gqa":  # 4 heads, 2 kv heads
        lm = tiny_llama(21, hidden=64, layers=2, name="exact", exact=True)
    else:
        lm = odd_llama(exact=True)
    yield lm
    lm.close()


def decode_alone(lm, seq, prompt_len):
    cache = lm.new_cache()
    rows = [lm.forward(cache, 0, seq[:prompt_len])[-1:]]
    rows += [lm.forward(cache, i, seq[i : i + 1]) for i in range(prompt_len, len(seq) - 1)]
    cache.close()
    return torch.cat(rows)  # predictions for positions prompt_len .. len(seq)-1


@pytest.mark.parametrize("seed", range(4))
def test_logits_are_bit_identical_in_any_batch_and_window(exact_lm, seed):
    rng = random.Random(seed)
    vocab = exact_lm.vocab_size
    seqs = [[rng.randrange(vocab) for _ in range(rng.randrange(12, 40))] for _ in range(5)]
    prompts = [rng.randrange(1, 8) for _ in seqs]
    want = [decode_alone(exact_lm, s, p) for s, p in zip(seqs, prompts)]
    # all five together: prefill, then random windows, joining at different steps, random order
    caches = [exact_lm.new_cache() for _ in seqs]
    fed = [0] * len(seqs)
    got: list[list[torch.Tensor]] = [[] for _ in seqs]
    while any(f < len(s) - 1 for f, s in zip(fed, seqs)):
        order = [i for i in range(len(seqs)) if fed[i] < len(seqs[i]) - 1 and rng.random() < 0.8]
        rng.shuffle(order)
        feeds = []
        for i in order:
            end = prompts[i] if fed[i] == 0 else min(fed[i] + rng.randrange(1, 7), len(seqs[i]) - 1)
            feeds.append(Feed(caches[i], fed[i], seqs[i][fed[i] : end]))
        for i, f, out in zip(order, feeds, exact_lm.forward_batch(feeds)):
            got[i].append(out[-1:] if f.start == 0 else out)
            fed[i] = f.start + len(f.tokens)
    for w, g in zip(want, got):
        assert torch.equal(torch.cat(g), w)


def test_a_rollback_then_refeed_is_bit_identical(exact_lm):
    seq = list(range(3, 30))
    want = decode_alone(exact_lm, seq, 5)
    cache = exact_lm.new_cache()
    exact_lm.forward(cache, 0, seq[:5])
    exact_lm.forward(cache, 5, [9, 9, 9, 9])  # rejected drafts
    out = exact_lm.forward(cache, 5, seq[5:-1])
    assert torch.equal(out, want[1:])


def test_exact_mode_refuses_a_pass_past_the_context(exact_lm):
    cache = exact_lm.new_cache()
    with pytest.raises(ValueError, match="past the context"):
        exact_lm.forward(cache, 0, [1] * (exact_lm.max_context + 1))


def test_exact_mode_is_refused_where_the_kernels_are_not_batch_invariant(monkeypatch):
    real = exact_mod._tiled_linear

    def shape_dependent(self, x):  # a kernel whose result depends on how many rows it gets
        out = real(self, x)
        return out + 1e-3 * x.reshape(-1, x.shape[-1]).shape[0]

    monkeypatch.setattr(exact_mod, "_tiled_linear", shape_dependent)
    with pytest.raises(ModelLoadError, match="--exact"):
        tiny_llama(22, name="not-exact", exact=True)


def test_default_mode_is_not_exact_and_exact_mode_says_so(exact_lm, target):
    assert exact_lm.exact and exact_lm.fixed_length >= exact_lm.max_context
    assert exact_lm.fixed_length % 64 == 0  # softmax rows aligned to the vector loops
    assert not target.exact
