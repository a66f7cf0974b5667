"""Every flag is checked before a model loads: a typo costs no loading time.

The model constructor is replaced by one that fails the test, so each case proves its one-line
error came from the flag check, ahead of any loading (and of any import-time cost but the CLI's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wanspec.cli.app import app
from wanspec.models.backend import CausalLM


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was loaded before every flag was checked")

    monkeypatch.setattr(CausalLM, "__init__", refuse)


TRACE = str(Path(__file__).parents[2] / "benchmarks" / "results" / "shipped_pair_trace.jsonl")

CASES = [
    (["generate", "-p", "x", "--mode", "remote", "--rtt", "abc"], "invalid --rtt 'abc'"),
    (["generate", "-p", "x", "--mode", "remote", "--jitter", "-1ms"], "--jitter must be"),
    (["generate", "-p", "x", "--mode", "remote", "--policy", "bogus"], "unknown policy 'bogus'"),
    (["generate", "-p", "x", "--dtype", "float8"], "unknown dtype 'float8'"),
    (["generate", "-p", "x", "--target-ms", "-3", "--draft-ms", "4"], "--target-ms must be between 0"),
    (["emulate", "--rtt", "abc"], "invalid --rtt 'abc'"),
    (["emulate", "--sweep", "0,x"], "invalid --sweep"),
    (["emulate", "--bandwidth", "100 furlongs"], "invalid --bandwidth"),
    (["emulate", "--csv", "/nonexistent/dir/out.csv"], "cannot write --csv"),
    (["emulate", "--plot", "/nonexistent/dir/out.png"], "cannot write --plot"),
    (["emulate", "--plot", "out.txt"], ".txt is not an image format"),
    (["emulate", "--entropy-threshold", "-1"], "entropy_threshold must be >= 0 and <= 100"),
    (["emulate", "--sd-gammas", "5-2"], "a range runs from low to high"),
    (["emulate", "--sd-gammas", "1,,3"], "invalid --sd-gammas '1,,3'"),
    (["emulate", "--concurrency", "2,,4"], "invalid --concurrency '2,,4'"),
    (["emulate", "--request-rate", "inf"], "--request-rate must be > 0"),
    (["generate", "-p", "x", "--policy", "bogus"], "unknown policy 'bogus'"),
    (["emulate", "--admission"], "--admission only applies with --concurrency or --request-rate"),
    (["emulate", "--max-batch", "8"], "--max-batch only applies with --concurrency"),
    (["simulate", "--slo-tpot", "30ms"], "--slo-tpot only applies with --concurrency"),
    (["simulate", "--worker-max-batch", "8"], "--worker-max-batch only applies with"),
    (["simulate", "--burst", "0.3"], "--burst only applies with --match markov"),
    (["simulate", "--sweep", "burst=0.1,0.9"], "--sweep burst only applies with --match markov"),
    (["simulate", "--trace", TRACE, "--alpha", "0.5"],
     "--alpha only applies with the synthetic acceptance model"),
    (["simulate", "--trace", TRACE, "--sweep",
      "alpha=0.5,0.6"], "--sweep alpha: a --trace replays its recorded acceptance"),
    (["emulate", "--num-prompts", "200"], "--num-prompts 200: the prompts file holds only 16"),
    (["emulate", "--prompts", "/"], "prompts file / is a directory"),
    (["simulate", "--plot", "out.csv"], ".csv is not an image format"),
    (["emulate", "--prompts", "/nonexistent/prompts.txt"], "prompts file not found"),
    (["emulate", "--threads", "0"], "threads must be >= 1"),
    (["emulate", "--concurrency", "0"], "client counts must be >= 1"),
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--timeout", "0"], "--timeout must be > 0"),
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--dtype", "int3"], "unknown dtype"),
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--device", "tpu:9"], "device"),
    (["controller", "--worker", "127.0.0.1:1", "--prompts", "/nonexistent.txt"], "not found"),
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--ca", "/nonexistent/ca.pem"],
     "not found"),
    (["controller", "--worker", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--require-worker"],
     "--require-worker is for --prompt/--prompts"),
    (["worker", "--draft-ms", "-1"], "--draft-ms must be between 0 and 100 s"),
    (["worker", "--dtype", "float8"], "unknown dtype"),
    (["worker", "--listen", "nohost"], "has no port"),
    (["worker", "--metrics-port", "70000"], "--metrics-port"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_flags_fail_before_any_model_loads(runner, narrow_stderr, args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.output
