"""Fixtures of the remote-runtime tests: reference outputs and an incompatible draft."""

from __future__ import annotations

import pytest
from helpers import tiny_llama_with_tokenizer
from remote_support import SAMPLED, reference

from wanspec.runtime.engine import TimingConfig


@pytest.fixture(scope="module")
def ref_greedy(target):
    return reference(target)


@pytest.fixture(scope="module")
def ref_sampled(target):
    return reference(target, SAMPLED)


@pytest.fixture(scope="module")
def ref_measured(target):
    return reference(target, timing=TimingConfig(), max_tokens=16)


@pytest.fixture(scope="module")
def other_tok_draft():
    lm = tiny_llama_with_tokenizer(5, 280, name="other-tokenizer")
    yield lm
    lm.close()
