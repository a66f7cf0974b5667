"""Flags that would be silently ignored, or that contradict each other, are one-line errors
before any model loads (issue: controller --api-key without --listen ran ignoring the key)."""

from __future__ import annotations

import pytest

from wanspec.cli.app import app
from wanspec.models.backend import CausalLM

W = ["controller", "--worker", "127.0.0.1:1"]


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was loaded before every flag was checked")

    monkeypatch.setattr(CausalLM, "__init__", refuse)


CASES = [
    ([*W, "-p", "x", "--api-key", "k"], "--api-key only applies with --listen"),
    ([*W, "-p", "x", "--served-model-name", "m"], "--served-model-name only applies with --listen"),
    ([*W, "-p", "x", "--grace", "5"], "--grace only applies with --listen"),
    ([*W, "-p", "x", "--max-request-bytes", "1000"],
     "--max-request-bytes only applies with --listen"),
    ([*W, "-p", "x", "--max-prompts-per-request", "2"],
     "--max-prompts-per-request only applies with --listen"),
    ([*W, "-p", "x", "--max-queued-requests", "9"],
     "--max-queued-requests only applies with --listen"),
    ([*W, "-p", "x", "--insecure", "--ca", "ca.pem"], "give --ca or --insecure, not both"),
    ([*W, "-p", "x", "--tls", "--insecure", "--ca", "ca.pem"], "give --ca or --insecure, not both"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_conflicting_or_ignored_flags_are_refused(runner, narrow_stderr, args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr


def test_the_api_key_environment_variable_is_no_error_without_listen(runner, narrow_stderr,
                                                                      monkeypatch):
    """$WANSPEC_API_KEY is a standing setting, not a flag given for this command: only the
    unrelated bad --timeout is reported."""
    monkeypatch.setenv("WANSPEC_API_KEY", "k")
    r = runner.invoke(app, [*W, "-p", "x", "--timeout", "0"])
    assert r.exit_code == 2 and "--timeout" in r.stderr and "--api-key" not in r.stderr, r.stderr
