"""Tokenizer fingerprints: same tokenizer -> same print; different -> IncompatibleModelsError."""

from __future__ import annotations

import pytest

from helpers import save_tiny_model, tiny_llama_with_tokenizer, tiny_tokenizer
from wanspec.errors import IncompatibleModelsError
from wanspec.models.fingerprint import check_compatible, tokenizer_fingerprint
from wanspec.runtime.engine import LocalEngine


def test_same_tokenizer_same_fingerprint(target, random_draft):
    a = tokenizer_fingerprint(target.tokenizer)
    assert len(a) == 16 and int(a, 16) >= 0
    assert a == tokenizer_fingerprint(random_draft.tokenizer)
    assert a == tokenizer_fingerprint(tiny_tokenizer())
    check_compatible(target.tokenizer, random_draft.tokenizer)


def test_fingerprint_survives_save_and_reload(tmp_path, target):
    from transformers import AutoTokenizer

    save_tiny_model(target, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(target.tokenizer)


def test_different_vocab_different_fingerprint():
    assert tokenizer_fingerprint(tiny_tokenizer(280)) != tokenizer_fingerprint(tiny_tokenizer(300))
    with pytest.raises(IncompatibleModelsError, match="different tokenizer"):
        check_compatible(tiny_tokenizer(300), tiny_tokenizer(280), target_name="T", draft_name="D")


def test_local_engine_refuses_an_incompatible_draft(target):
    other = tiny_llama_with_tokenizer(1, 280)
    try:
        with pytest.raises(IncompatibleModelsError):
            LocalEngine(target, other)
    finally:
        other.close()
    LocalEngine(target)  # no draft: nothing to check
