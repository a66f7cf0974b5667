"""Tiny models and drafters shared by the tests (models built from a config, never downloaded)."""

from __future__ import annotations

import functools

import torch

from wanspec.models.backend import CausalLM

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. "
) * 8


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>",
                                   pad_token="<eos>")


def tiny_llama(seed: int, *, hidden: int = 32, layers: int = 2, vocab: int | None = None,
               dtype: torch.dtype = torch.float32, name: str = "tiny") -> CausalLM:
    """A random Llama; deterministic for a seed.  Logits are sharpened so argmax ties are rare."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    vocab = vocab or len(tok)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # sharper distributions: fewer near-ties, more structure
    return CausalLM.from_model(model, tok, name=name)
