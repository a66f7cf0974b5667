"""CausalLM + KVCache: rollback by cropping, loading from a directory, load errors."""

from __future__ import annotations

import pytest
import torch

from helpers import save_tiny_model, tiny_llama
from wanspec.errors import ModelLoadError
from wanspec.models.backend import CausalLM, resolve_device, resolve_dtype
from wanspec.models.kv import KVCache, SlotPool

SEQ = [17, 101, 5, 250, 9, 77, 33, 120, 64, 2, 199, 45]
ATOL = 1e-5  # only logits are compared with a tolerance (different batch shapes)


def test_forward_shapes_and_cache_length(target):
    cache = target.new_cache()
    logits = target.forward(cache, 0, SEQ[:5])
    assert logits.shape == (5, target.vocab_size) and logits.dtype == torch.float32
    assert cache.length == 5
    target.forward(cache, 5, SEQ[5:7])
    assert cache.length == 7


def test_incremental_equals_full_prefill(target):
    full = target.forward(target.new_cache(), 0, SEQ)
    cache = target.new_cache()
    parts = [target.forward(cache, 0, SEQ[:4]), target.forward(cache, 4, SEQ[4:5]),
             target.forward(cache, 5, SEQ[5:])]
    assert torch.allclose(torch.cat(parts), full, rtol=0, atol=ATOL)
    assert torch.equal(torch.cat(parts).argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("crop_to", [0, 1, 3, 7, 8])
def test_rollback_then_refeed_matches_a_fresh_forward(target, crop_to):
    full = target.forward(target.new_cache(), 0, SEQ)
    cache = target.new_cache()
    target.forward(cache, 0, SEQ[:8])
    target.forward(cache, 8, [3, 4, 5])  # speculative junk that gets rolled back
    assert cache.length == 11
    out = target.forward(cache, crop_to, SEQ[crop_to:])
    assert cache.length == len(SEQ)
    assert torch.allclose(out, full[crop_to:], rtol=0, atol=ATOL)
    # the stale positions were overwritten: the slot holds what a fresh cache holds
    fresh = target.new_cache()
    target.forward(fresh, 0, SEQ)
    for keys in target.pool.keys:
        assert torch.allclose(keys[cache.slot, :, : len(SEQ)], keys[fresh.slot, :, : len(SEQ)],
                              rtol=0, atol=ATOL)


def test_rollback_with_different_tokens_changes_later_logits(target):
    cache = target.new_cache()
    a = target.forward(cache, 0, SEQ[:6])
    b = target.forward(cache, 3, [1, 2, 3])  # replaces positions 3..5
    ref = target.forward(target.new_cache(), 0, SEQ[:3] + [1, 2, 3])
    assert torch.allclose(b, ref[3:], rtol=0, atol=ATOL)
    assert not torch.allclose(b, a[3:], rtol=0, atol=ATOL)


def test_forward_errors(target):
    cache = target.new_cache()
    with pytest.raises(ValueError):
        target.forward(cache, 0, [])
    target.forward(cache, 0, SEQ[:3])
    with pytest.raises(ValueError):
        target.forward(cache, 5, SEQ[3:5])  # a gap: cannot feed past the cached length
    assert cache.length == 3


def test_kvcache_crop_cannot_extend():
    c = KVCache(SlotPool())
    c.crop(0)
    with pytest.raises(ValueError):
        c.crop(1)


def test_eos_ids_and_codec(target):
    assert target.eos_ids == frozenset({target.tokenizer.eos_token_id})
    text = "To be, or not to be"
    ids = target.encode(text)
    assert ids and target.decode(ids) == text


def test_load_from_directory_matches_in_memory(tmp_path, target):
    path = save_tiny_model(target, tmp_path / "tiny")
    lm = CausalLM(path, dtype="float32", device="cpu")
    try:
        assert lm.name == "tiny" and lm.vocab_size == target.vocab_size
        assert lm.dtype == torch.float32 and lm.device.type == "cpu"
        a = lm.forward(lm.new_cache(), 0, SEQ)
        b = target.forward(target.new_cache(), 0, SEQ)
        assert torch.allclose(a, b, rtol=0, atol=ATOL)
        assert lm.encode("whether 'tis nobler") == target.encode("whether 'tis nobler")
        assert lm.eos_ids == target.eos_ids
    finally:
        lm.close()


def test_model_load_error_for_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        CausalLM(tmp_path / "nope", device="cpu")


def test_model_load_error_for_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json"):
        CausalLM(tmp_path, device="cpu")


@pytest.mark.parametrize("config", ["not json", "{}"])
def test_model_load_error_for_broken_directory(tmp_path, config):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelLoadError):
        CausalLM(tmp_path, device="cpu")


def test_resolve_device_and_dtype():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ModelLoadError):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float64", cpu) == torch.float64
    with pytest.raises(ModelLoadError):
        resolve_dtype("int8", cpu)


def test_float64_model_forward():
    lm = tiny_llama(3, dtype=torch.float64, name="f64")
    try:
        logits = lm.forward(lm.new_cache(), 0, SEQ[:4])
        assert logits.dtype == torch.float32  # logits are always returned as float32
    finally:
        lm.close()
