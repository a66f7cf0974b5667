"""Tokenizer fingerprints: draft tokens are only meaningful to a target with the same tokenizer."""

from __future__ import annotations

import hashlib
import json

from wanspec.errors import IncompatibleModelsError


def tokenizer_fingerprint(tokenizer) -> str:
    """A short stable hash of the vocabulary, merges-independent but id-exact, plus special ids."""
    vocab = tokenizer.get_vocab()
    payload = {
        "vocab": sorted(vocab.items(), key=lambda kv: kv[1]),
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
    }
    digest = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


def check_compatible(target_tokenizer, draft_tokenizer, *, target_name: str = "target",
                     draft_name: str = "draft") -> None:
    """Raise :class:`IncompatibleModelsError` unless both tokenizers map text to the same ids."""
    a, b = tokenizer_fingerprint(target_tokenizer), tokenizer_fingerprint(draft_tokenizer)
    if a != b:
        raise IncompatibleModelsError(
            f"the draft ({draft_name}) uses a different tokenizer than the target "
            f"({target_name}): fingerprints {b} vs {a}; speculative decoding needs a shared vocabulary"
        )
