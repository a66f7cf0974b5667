"""``wanspec bench`` on the command line: its JSON, its tables, and flags checked before any request."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench_fake_server import FakeOpenAI, Reply
from wanspec.cli.app import app

SUMMARY_KEYS = {
    "url", "model", "chat", "load", "concurrency", "request_rate", "max_tokens", "temperature",
    "seed", "requests", "completed", "failed", "duration_s", "output_tokens", "prompt_tokens",
    "tokens_from_usage", "request_throughput", "output_throughput_tok_s", "slo_tpot_ms",
    "slo_ttft_ms", "goodput_tok_s", "goodput_req_s", "slo_attained", "tokens_per_chunk",
    "errors", "error_examples", "requests_detail",
    *(f"{m}_ms_{s}" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p95", "p99")),
}
REQUEST_KEYS = {"index", "ok", "start_s", "ttft_s", "tpot_s", "e2e_s", "output_tokens",
                "prompt_tokens", "tokens_from", "chunks", "status", "error_kind", "error"}


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args, env=None):
    return runner.invoke(app, ["bench", *args], catch_exceptions=True,
                         env={"WANSPEC_API_KEY": None, "OPENAI_API_KEY": None, **(env or {})})


def test_json_has_the_summary_and_every_request(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n"two"\n')
    reply = lambda i, b: Reply(tokens=5, tokens_per_chunk=2) if i != 2 else Reply(status=503)
    with FakeOpenAI(reply=reply) as srv:
        r = invoke(runner, "--url", srv.url, "--prompts", str(prompts), "--num-prompts", "5",
                   "--concurrency", "2", "--max-tokens", "5", "--temperature", "0.5",
                   "--seed", "7", "--ignore-eos", "--json")
        bodies = [s.body for s in srv.completions()]
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) == SUMMARY_KEYS
    assert (out["requests"], out["completed"], out["failed"]) == (5, 4, 1)
    assert out["errors"] == {"http 503": 1} and out["output_tokens"] == 20
    assert out["tokens_per_chunk"] == pytest.approx(5 / 3)
    assert out["load"] == "c=2" and out["model"] == "fake-model"
    assert len(out["requests_detail"]) == 5
    assert all(set(d) == REQUEST_KEYS for d in out["requests_detail"])
    assert sorted(b["prompt"] for b in bodies) == ["one"] * 3 + ["two"] * 2  # two clients race
    assert all(b["max_tokens"] == 5 and b["temperature"] == 0.5 and b["seed"] == 7
               and b["ignore_eos"] is True for b in bodies)


def test_the_tables_fit_80_columns(runner):
    reply = lambda i, b: Reply(tokens=3) if i else Reply(status=500)
    with FakeOpenAI(reply=reply) as srv:
        r = invoke(runner, "--url", srv.url + "/v1/completions", "--num-prompts", "3",
                   "--request-rate", "50", "--slo-ttft", "1s")
    assert r.exit_code == 0, r.output
    tables = [line for line in r.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert tables and max(len(line) for line in tables) <= 80
    for needle in ("TTFT", "TPOT", "ITL", "E2E", "p99", "output throughput",
                   "goodput (TPOT <= 50 ms, TTFT <= 1000 ms)", "http 500", "Poisson 50 req/s"):
        assert needle in r.stdout, needle
    assert "http 500: injected 500" in r.stdout


def test_the_api_key_comes_from_the_flag_or_the_environment(runner):
    with FakeOpenAI(reply=lambda i, b: Reply(tokens=1)) as srv:
        invoke(runner, "--url", srv.url, "--num-prompts", "1", "--json",
               env={"OPENAI_API_KEY": "from-openai"})
        invoke(runner, "--url", srv.url, "--num-prompts", "1", "--json",
               env={"OPENAI_API_KEY": "from-openai", "WANSPEC_API_KEY": "from-wanspec"})
        invoke(runner, "--url", srv.url, "--num-prompts", "1", "--json", "--api-key", "flag",
               env={"WANSPEC_API_KEY": "from-wanspec"})
        keys = [s.headers.get("authorization") for s in srv.completions()]
    assert keys == ["Bearer from-openai", "Bearer from-wanspec", "Bearer flag"]


def test_all_requests_failing_exits_1_with_the_report(runner):
    with FakeOpenAI(reply=lambda i, b: Reply(status=500)) as srv:
        r = invoke(runner, "--url", srv.url, "--num-prompts", "2", "--model", "m", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["errors"] == {"http 500": 2}


@pytest.mark.parametrize("args, needle", [
    (["--url", "localhost:8000"], "invalid --url"),
    (["--concurrency", "2", "--request-rate", "3"], "not both"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--request-rate", "0"], "--request-rate must be > 0"),
    (["--request-rate", "nan"], "--request-rate must be > 0"),
    (["--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--slo-tpot", "fast"], "invalid --slo-tpot"),
    (["--slo-ttft", "0ms"], "--slo-ttft must be > 0"),
    (["--model", " "], "--model must not be empty"),
    (["--prompts", "/nonexistent/prompts.txt"], "prompts file not found"),
    (["--chat", "--url", "URL/v1/completions"], "--chat"),
])
def test_bad_flags_are_one_line_errors_before_any_request(runner, args, needle):
    with FakeOpenAI() as srv:
        args = [a.replace("URL", srv.url) for a in args]
        if "--url" not in args:
            args = ["--url", srv.url, *args]
        r = invoke(runner, *args)
        assert srv.seen == []
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_an_unreachable_server_is_a_one_line_error(runner):
    with FakeOpenAI() as srv:
        url = srv.url
    r = invoke(runner, "--url", url)
    assert r.exit_code == 2 and "cannot reach" in r.stderr and "--model" not in r.stderr
