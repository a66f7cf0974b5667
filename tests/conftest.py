"""Shared, session-scoped tiny models (built once; building a model costs ~0.5 s)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import perturbed_copy, tiny_llama, tiny_tokenizer

from wanspec.models.backend import CausalLM

TARGET_SEED = 3  # its greedy outputs are varied (seed 0 collapses into one repeated token)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def target():
    lm = tiny_llama(TARGET_SEED, name="target")
    yield lm
    lm.close()


@pytest.fixture(scope="session")
def same_draft():
    """A drafter identical to the target (same seed, same architecture, separate instance)."""
    lm = tiny_llama(TARGET_SEED, name="same-draft")
    yield lm
    lm.close()


@pytest.fixture(scope="session")
def random_draft():
    """An unrelated, smaller random drafter sharing the tokenizer."""
    lm = tiny_llama(11, hidden=16, layers=1, name="random-draft")
    yield lm
    lm.close()


@pytest.fixture(scope="session")
def near_draft(target):
    """The target with a little weight noise: agrees often but not always."""
    lm = perturbed_copy(target, scale=0.003, seed=5, name="near-draft")
    yield lm
    lm.close()


@pytest.fixture(scope="session")
def eos_pair(target):
    """(target, identical draft) that often choose EOS: the EOS row of the output head points
    along the mean final hidden state, scaled so that EOS wins at roughly 1 step in 8-10."""
    model = copy.deepcopy(target.model)
    seqs = torch.randint(0, target.vocab_size, (20, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = model.model(input_ids=seqs).last_hidden_state.reshape(-1, model.config.hidden_size)
        top = (h @ model.lm_head.weight.T).max(-1).values.mean()
        u = h.mean(0) / h.mean(0).norm()
        model.lm_head.weight[target.tokenizer.eos_token_id] = u * 0.25 * top / (h @ u).mean()
    t = CausalLM.from_model(model, target.tokenizer, name="eos-target")
    d = CausalLM.from_model(copy.deepcopy(model), target.tokenizer, name="eos-draft")
    yield t, d
    t.close()
    d.close()


# ---- CLI tests ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def site_registry(tmp_path_factory, monkeypatch):
    """Sites started by a test register in a directory of their own: wanspec processes running
    elsewhere on this machine must not change a test's thread split (wanspec.threads)."""
    runtime = tmp_path_factory.mktemp("runtime")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime / "wanspec" / "sites"


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def narrow_stderr():
    """Pin the error console to 80 columns (a pipe or a plain terminal), whatever runs pytest."""
    from wanspec.cli import common

    saved = common.err_console._width
    common.err_console.width = 80
    try:
        yield
    finally:
        common.err_console._width = saved
