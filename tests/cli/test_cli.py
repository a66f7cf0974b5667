"""The ``wanspec`` command line: bad values give one short error, modes give identical tokens.

Commands run in-process with Typer's CliRunner (the same code as the console script, without the
cost of importing torch in a new process for each invocation).
"""

from __future__ import annotations

import json

import pytest
from helpers import save_tiny_model, tiny_llama_with_tokenizer

from wanspec import __version__
from wanspec.cli.app import app

PROMPT = "To be, or not to be"
SAMPLING = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "21"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, target, near_draft):
    root = tmp_path_factory.mktemp("cli-models")
    other = tiny_llama_with_tokenizer(5, 280, name="other-tokenizer")
    try:
        return {"target": save_tiny_model(target, root / "target"),
                "draft": save_tiny_model(near_draft, root / "draft"),
                "other": save_tiny_model(other, root / "other-tokenizer"),
                "root": root}
    finally:
        other.close()


def invoke(runner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def generate(runner, dirs, *args: str, draft: bool = True):
    cmd = ["generate", "--target", str(dirs["target"]), "--prompt", PROMPT, "--max-tokens", "20",
           "--ignore-eos", "--json"]
    if draft:
        cmd += ["--draft", str(dirs["draft"])]
    r = invoke(runner, *cmd, *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def assert_user_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not a crash
    err = result.stderr
    assert "Traceback" not in result.output
    assert err.startswith("error: "), err
    assert result.stdout == ""
    for n in needles:
        assert n in " ".join(err.split()), err
    return err


# ---- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--gamma", "0"], "--gamma must be >= 1"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--top-k", "-2"], "top-k must be >= 0"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--target-ms", "30"], "go together"),
    (["--mode", "remote", "--rtt", "fast"], "invalid --rtt"),
    (["--mode", "remote", "--policy", "bogus"], "unknown policy"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_generate_bad_values_are_one_line_errors(args, needle, runner, model_dirs, narrow_stderr):
    r = invoke(runner, "generate", "--target", str(model_dirs["target"]), "--draft",
               str(model_dirs["draft"]), "--prompt", PROMPT, *args)
    err = assert_user_error(r, needle)
    assert len(err.strip().splitlines()) == 1, err


def test_generate_missing_target_dir(runner, narrow_stderr):
    missing = "/nonexistent/wanspec-model"  # short: see test_long_errors_stay_on_one_line
    r = invoke(runner, "generate", "--mode", "target", "--target", str(missing), "--prompt", PROMPT)
    err = assert_user_error(r, "model directory not found")
    assert len(err.strip().splitlines()) == 1, err


def test_generate_target_dir_without_a_model(runner, tmp_path):
    r = invoke(runner, "generate", "--mode", "target", "--target", str(tmp_path), "--prompt", PROMPT)
    assert_user_error(r, "not a model directory")


@pytest.mark.parametrize("mode", ["sd", "remote", "target"])
def test_generate_draft_with_another_tokenizer(mode, runner, model_dirs):
    r = invoke(runner, "generate", "--mode", mode, "--target", str(model_dirs["target"]),
               "--draft", str(model_dirs["other"]), "--prompt", PROMPT)
    assert_user_error(r, "different tokenizer")


def test_long_errors_stay_on_one_line(runner, model_dirs, narrow_stderr):
    r = invoke(runner, "generate", "--mode", "sd", "--target", str(model_dirs["target"]),
               "--draft", str(model_dirs["other"]), "--prompt", PROMPT)
    err = assert_user_error(r, "different tokenizer")
    assert len(err.strip().splitlines()) == 1, err


def test_controller_bad_values(runner, model_dirs, narrow_stderr):
    base = ["controller", "--target", str(model_dirs["target"]), "--draft",
            str(model_dirs["draft"])]
    r = invoke(runner, *base, "--worker", "127.0.0.1:1", "--prompt", PROMPT, "--gamma", "0")
    assert_user_error(r, "--gamma must be >= 1")
    r = invoke(runner, *base, "--worker", "nohost", "--prompt", PROMPT)
    assert_user_error(r, "has no port")
    r = invoke(runner, *base, "--worker", "127.0.0.1:1")
    assert_user_error(r, "exactly one of --prompt or --prompts")
    r = invoke(runner, *base, "--worker", "127.0.0.1:1", "--prompt", PROMPT, "--policy", "x")
    assert_user_error(r, "unknown policy")


def test_worker_bad_values(runner, model_dirs):
    r = invoke(runner, "worker", "--draft", str(model_dirs["draft"]), "--max-sessions", "0")
    assert_user_error(r, "--max-sessions must be >= 1")
    # refused before any model is loaded: the draft directory is not even looked at
    r = invoke(runner, "worker", "--draft", "/nonexistent/draft", "--max-batch", "0")
    err = assert_user_error(r, "--max-batch must be >= 1, got 0")
    assert len(err.strip().splitlines()) == 1, err
    r = invoke(runner, "worker", "--draft", str(model_dirs["draft"]), "--transport", "quic",
               "--listen", "127.0.0.1:0")
    assert_user_error(r, "QUIC always uses TLS")


def test_version(runner):
    r = invoke(runner, "--version")
    assert r.exit_code == 0 and __version__ in r.stdout


# ---- identical outputs across modes -------------------------------------------------------------


@pytest.mark.parametrize("sampling", [[], SAMPLING], ids=["greedy", "sampled"])
def test_sd_and_target_modes_give_identical_tokens(sampling, runner, model_dirs):
    t = generate(runner, model_dirs, "--mode", "target", *sampling, draft=False)
    s = generate(runner, model_dirs, "--mode", "sd", *sampling)
    assert len(t["token_ids"]) == 20
    assert s["token_ids"] == t["token_ids"] and s["text"] == t["text"]
    assert t["mode"] == "target" and s["mode"] == "sd"
    assert t["metrics"]["draft_passes"]["controller"] == 0
    assert s["metrics"]["draft_passes"]["controller"] > 0


@pytest.mark.parametrize("sampling", [[], SAMPLING], ids=["greedy", "sampled"])
def test_remote_mode_gives_identical_tokens(sampling, runner, model_dirs):
    t = generate(runner, model_dirs, "--mode", "target", *sampling, draft=False)
    r = generate(runner, model_dirs, "--mode", "remote", "--rtt", "40ms", *sampling)
    assert r["token_ids"] == t["token_ids"]
    assert r["mode"] == "remote"
    m = r["metrics"]
    assert m["worker_used"] is True
    assert set(m["draft_passes"]) >= {"controller", "worker"} and m["draft_passes"]["worker"] > 0


@pytest.mark.parametrize("policy", ["remote", "always", "entropy"])
def test_remote_mode_policies_on_emulated_timing(policy, runner, model_dirs):
    t = generate(runner, model_dirs, "--mode", "target", *SAMPLING, draft=False)
    r = generate(runner, model_dirs, "--mode", "remote", "--rtt", "0.12s", "--jitter", "10ms",
                 "--policy", policy, "--target-ms", "30", "--draft-ms", "4", *SAMPLING)
    assert r["token_ids"] == t["token_ids"]
    assert r["timing"].startswith("emulated")
    if policy == "remote":
        assert r["metrics"]["draft_passes"]["controller"] == 0


def test_stop_string_is_honoured_identically(runner, model_dirs):
    full = generate(runner, model_dirs, "--mode", "target", draft=False)
    stop = full["text"][4:7]
    assert stop.strip()
    outs = [generate(runner, model_dirs, "--mode", m, "--stop", stop, "--rtt", "20ms")
            for m in ("target", "sd", "remote")]
    assert outs[0]["finish_reason"] == "stop_string"
    assert outs[0]["token_ids"] == outs[1]["token_ids"] == outs[2]["token_ids"]
    assert all(o["finish_reason"] == "stop_string" for o in outs)


def test_human_readable_output(runner, model_dirs):
    r = invoke(runner, "generate", "--mode", "sd", "--target", str(model_dirs["target"]),
               "--draft", str(model_dirs["draft"]), "--prompt", PROMPT, "--max-tokens", "8")
    assert r.exit_code == 0, r.output
    assert "committed tokens" in r.stdout and "draft passes" in r.stdout


def test_certs_command(runner, tmp_path):
    r = invoke(runner, "certs", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "ca.pem").is_file()
    # refuses to overwrite an existing CA without --overwrite
    r = invoke(runner, "certs", str(tmp_path / "c"))
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = invoke(runner, "certs", str(tmp_path / "c"), "--overwrite")
    assert r.exit_code == 0, r.output


# ---- `wanspec controller` in-process against a worker served from a thread -------------------


@pytest.fixture(scope="module")
def thread_worker(model_dirs):
    """A real TCP WorkerService (its own event loop, in a thread) on 127.0.0.1."""
    import asyncio
    import threading

    from wanspec.models.backend import CausalLM
    from wanspec.runtime.worker import WorkerService
    from wanspec.transport import factory

    lm = CausalLM(model_dirs["draft"], name="thread-worker-draft")
    service = WorkerService(lm)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    async def serve():
        box["server"] = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop)
    assert ready.wait(30), "worker thread did not start"
    host, port = box["server"].address
    try:
        yield {"address": f"{host}:{port}", "service": service}
    finally:
        asyncio.run_coroutine_threadsafe(box["server"].close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        lm.close()


def controller_lines(runner, dirs, address: str, *args: str, **kwargs) -> list[dict]:
    """``controller --json``: JSON Lines, one object per prompt."""
    r = runner.invoke(app, ["controller", "--worker", address, "--target", str(dirs["target"]),
                            "--draft", str(dirs["draft"]), "--ignore-eos", "--json",
                            "--timeout", "3", *args], **kwargs)
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def controller(runner, dirs, address: str, *args: str) -> dict:
    (out,) = controller_lines(runner, dirs, address, *args)
    return out


@pytest.mark.parametrize("local", [[], ["--no-local-draft"]], ids=["local-draft", "no-local-draft"])
def test_controller_command_against_a_worker(local, runner, model_dirs, thread_worker):
    ref = generate(runner, model_dirs, "--mode", "target", *SAMPLING, draft=False)
    out = controller(runner, model_dirs, thread_worker["address"], "--prompt", PROMPT,
                     "--max-tokens", "20", *local, *SAMPLING)
    assert out["token_ids"] == ref["token_ids"]
    m = out["metrics"]
    assert m["worker_used"] is True and m["worker_lost"] is None
    assert set(m["draft_passes"]) >= {"controller", "worker"}
    assert m["draft_passes"]["worker"] > 0
    assert m["worker_rtt_ms"] is not None and m["worker_rtt_ms"] >= 0
    if local:
        assert m["draft_passes"]["controller"] == 0


def test_controller_command_with_a_prompts_file(runner, model_dirs, thread_worker, tmp_path):
    prompts = ["To be, or not to be", "that is the question"]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n")
    out = controller_lines(runner, model_dirs, thread_worker["address"], "--prompts", str(path),
                           "--max-tokens", "12", "--policy", "remote")
    assert len(out) == 2  # JSON Lines: one object per prompt
    for p, o in zip(prompts, out):
        r = invoke(runner, "generate", "--mode", "target", "--target", str(model_dirs["target"]),
                   "--prompt", p, "--max-tokens", "12", "--ignore-eos", "--json")
        assert o["token_ids"] == json.loads(r.stdout)["token_ids"]
        assert o["metrics"]["worker_used"] is True


def test_controller_command_with_several_workers_one_of_them_down(runner, model_dirs,
                                                                 thread_worker):
    from helpers import free_tcp_port

    dead = f"127.0.0.1:{free_tcp_port()}"
    ref = generate(runner, model_dirs, "--mode", "target", *SAMPLING, draft=False)
    out = controller(runner, model_dirs, dead, "--worker", thread_worker["address"],
                     "--prompt", PROMPT, "--max-tokens", "20", *SAMPLING)
    assert out["token_ids"] == ref["token_ids"]
    m = out["metrics"]
    assert m["worker_used"] is True and m["worker"] == thread_worker["address"]
    assert m["draft_passes"]["worker"] > 0
    r = invoke(runner, "controller", "--worker", dead, "--worker", thread_worker["address"],
               "--target", str(model_dirs["target"]), "--draft", str(model_dirs["draft"]),
               "--timeout", "3", "--prompt", PROMPT, "--max-tokens", "8")
    assert r.exit_code == 0, r.output
    assert "workers" in r.stdout and dead in r.stdout  # the per-worker table


def test_controller_command_refuses_a_worker_given_twice(runner, model_dirs):
    r = invoke(runner, "controller", "--worker", "127.0.0.1:9", "--worker", "127.0.0.1:9",
               "--prompt", "x", "--target", "/nonexistent")
    assert r.exit_code != 0 and "given twice" in r.output and "Traceback" not in r.output


def test_controller_command_without_a_worker(runner, model_dirs):
    from helpers import free_tcp_port

    ref = generate(runner, model_dirs, "--mode", "target", draft=False)
    out = controller(runner, model_dirs, f"127.0.0.1:{free_tcp_port()}", "--prompt", PROMPT,
                     "--max-tokens", "20")
    assert out["token_ids"] == ref["token_ids"]
    m = out["metrics"]
    assert m["worker_used"] is False
    assert "refused" in m["worker_error"] or "cannot reach" in m["worker_error"]
    assert m["draft_passes"]["worker"] == 0


# ---- output for scripts: JSON Lines as each prompt finishes, -p -, --require-worker ----------


def test_controller_json_lines_come_as_each_prompt_finishes(runner, model_dirs, thread_worker,
                                                           tmp_path, monkeypatch):
    import sys

    from wanspec.runtime.controller import RemoteEngine

    prompts = ["To be, or not to be", "that is the question", "whether 'tis nobler"]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(prompts) + "\n")
    printed_before: list[int] = []  # lines on stdout when each prompt starts decoding
    decode = RemoteEngine.agenerate

    async def counting(self, *args, **kwargs):
        printed_before.append(sys.stdout.buffer.getvalue().count(b"\n"))
        return await decode(self, *args, **kwargs)

    monkeypatch.setattr(RemoteEngine, "agenerate", counting)
    out = controller_lines(runner, model_dirs, thread_worker["address"], "--prompts", str(path),
                           "--max-tokens", "6")
    assert printed_before == [0, 1, 2]
    assert len(out) == 3 and all(o["metrics"]["worker_used"] for o in out)
    one = controller_lines(runner, model_dirs, thread_worker["address"], "--prompt", prompts[0],
                           "--max-tokens", "6")
    assert len(one) == 1 and one[0]["token_ids"] == out[0]["token_ids"]  # same shape for one


def test_prompt_dash_reads_stdin(runner, model_dirs, thread_worker):
    stdin = PROMPT + "\n"  # as `echo` writes it: the one trailing newline is dropped
    (piped,) = controller_lines(runner, model_dirs, thread_worker["address"], "--prompt", "-",
                                "--max-tokens", "8", input=stdin)
    given = controller(runner, model_dirs, thread_worker["address"], "--prompt", PROMPT,
                       "--max-tokens", "8")
    assert piped["token_ids"] == given["token_ids"]
    assert piped["prompt_tokens"] == given["prompt_tokens"]
    r = runner.invoke(app, ["generate", "--mode", "target", "--target", str(model_dirs["target"]),
                            "-p", "-", "-n", "8", "--ignore-eos", "--json"], input=stdin)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["token_ids"] == generate(
        runner, model_dirs, "--mode", "target", "-n", "8", draft=False)["token_ids"]


def test_require_worker_exits_non_zero_instead_of_decoding_alone(runner, model_dirs,
                                                                 thread_worker, narrow_stderr):
    from helpers import free_tcp_port

    dead = f"127.0.0.1:{free_tcp_port()}"
    r = invoke(runner, "controller", "--worker", dead, "--target", str(model_dirs["target"]),
               "--draft", str(model_dirs["draft"]), "--timeout", "2", "--prompt", PROMPT,
               "--max-tokens", "8", "--json", "--require-worker")
    assert r.exit_code == 1, r.output
    assert r.stdout == ""  # nothing decoded without the worker is printed
    assert r.stderr.startswith("error: no worker drafted prompt 1 of 1")
    assert "--require-worker" in r.stderr
    assert dead in r.stderr  # the reason names the worker
    out = controller(runner, model_dirs, thread_worker["address"], "--prompt", PROMPT,
                     "--max-tokens", "8", "--require-worker")
    assert out["metrics"]["worker_used"] is True
