"""``wanspec worker`` / ``controller`` / ``certs`` authentication options: the --insecure guard,
key-file and certificate checks before any model loads, and both commands end to end (a worker
process with a pre-shared key and mutual TLS over QUIC, controllers in-process)."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import save_tiny_model

from wanspec.cli.app import app
from wanspec.cli.sites import is_loopback
from wanspec.protocol.auth import KEY_ENV

PROMPT = "To be, or not to be"
NO_MODEL = "/nonexistent/draft-model"  # loading it fails: the options were checked before
TIMEOUT_S = 120
LISTENING = re.compile(r"listening on quic://([0-9.]+):(\d+)")


def invoke(runner, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), catch_exceptions=True, env=env)


def user_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    err = " ".join(result.stderr.split())
    assert err.startswith("error: "), err
    return err


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "wanspec.key"
    path.write_text("a7d1c3e5f0b2946d8e1f3a5c7b9d0e2f\n")
    return path


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("192.168.1.2", False),
    ("worker.example.org", False), ("localhost.example.org", False),
])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:7700", "10.0.0.5:7700", "[::]:7700",
                                    "worker.example.org:7700"])
def test_a_worker_on_a_public_address_without_authentication_refuses_to_start(runner, listen):
    err = user_error(invoke(runner, "worker", "--listen", listen, "--draft", NO_MODEL))
    assert err == (f"error: refusing to serve {listen} without authentication: anyone who "
                   "reaches it would get drafts and see prompts; give --auth-key-file (a "
                   "pre-shared key) and/or --client-ca (mutual TLS), or --insecure to serve it "
                   "anyway")


def model_error(result) -> str:
    """The command got past every security check and failed loading the (missing) model."""
    err = user_error(result)
    assert NO_MODEL in err and "authentication" not in err, err
    return err


def test_insecure_serves_a_public_address_with_a_warning(runner, caplog):
    caplog.set_level(logging.WARNING)
    model_error(invoke(runner, "worker", "--listen", "0.0.0.0:7700", "--insecure",
                       "--draft", NO_MODEL))
    assert "serving 0.0.0.0:7700 without authentication (--insecure)" in caplog.text


@pytest.mark.parametrize("listen", ["127.0.0.1:7700", "localhost:7700", "[::1]:7700"])
def test_loopback_needs_no_authentication(runner, listen):
    model_error(invoke(runner, "worker", "--listen", listen, "--draft", NO_MODEL))


def test_a_key_or_a_client_ca_is_authentication_enough(runner, key_file, tmp_path):
    model_error(invoke(runner, "worker", "--listen", "0.0.0.0:7700", "--auth-key-file",
                       str(key_file), "--draft", NO_MODEL))
    model_error(invoke(runner, "worker", "--listen", "0.0.0.0:7700", "--draft", NO_MODEL,
                       env={KEY_ENV: "a-key-from-the-environment-0123"}))
    r = invoke(runner, "certs", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    c = tmp_path / "c"
    model_error(invoke(runner, "worker", "--listen", "0.0.0.0:7700", "--transport", "quic",
                       "--cert", str(c / "server.pem"), "--key", str(c / "server.key"),
                       "--client-ca", str(c / "ca.pem"), "--draft", NO_MODEL))


@pytest.mark.parametrize("command", ["worker", "controller"])
@pytest.mark.parametrize("content, words", [
    (None, "not found"), ("", "is empty"), ("too short\n", "holds only 9 bytes"),
])
def test_bad_key_files_are_refused_before_models_load(runner, tmp_path, command, content, words):
    path = tmp_path / "k"
    if content is not None:
        path.write_text(content)
    args = (["worker", "--draft", NO_MODEL] if command == "worker" else
            ["controller", "--worker", "127.0.0.1:1", "--prompt", PROMPT, "--target", NO_MODEL])
    err = user_error(invoke(runner, *args, "--auth-key-file", str(path)))
    assert f"auth key file {path}" in err and words in err


def test_a_bad_key_in_the_environment_is_refused(runner):
    err = user_error(invoke(runner, "worker", "--draft", NO_MODEL, env={KEY_ENV: "short"}))
    assert f"{KEY_ENV} holds only 5 bytes" in err


def test_tls_options_are_checked_before_models_load(runner, tmp_path):
    err = user_error(invoke(runner, "worker", "--client-ca", str(tmp_path / "ca.pem"),
                            "--draft", NO_MODEL))
    assert "--client-ca (mutual TLS) needs TLS: give the worker --cert and --key" in err
    r = invoke(runner, "certs", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    c = tmp_path / "c"
    err = user_error(invoke(runner, "worker", "--cert", str(c / "server.pem"), "--key",
                            str(c / "server.key"), "--client-ca", str(tmp_path / "nope.pem"),
                            "--draft", NO_MODEL))
    assert "client CA certificate not found" in err
    base = ["controller", "--worker", "127.0.0.1:1", "--prompt", PROMPT, "--target", NO_MODEL]
    err = user_error(invoke(runner, *base, "--cert", str(c / "client.pem")))
    assert "--cert and --key go together" in err
    err = user_error(invoke(runner, *base, "--cert", str(c / "client.pem"), "--key",
                            str(c / "server.key")))  # not the certificate's key
    assert "cannot load TLS client certificate" in err
    err = user_error(invoke(runner, *base, "--transport", "quic", "--cert",
                            str(tmp_path / "nope.pem"), "--key", str(c / "client.key")))
    assert "TLS client certificate not found" in err


def test_certs_writes_a_client_certificate_and_issues_more(runner, tmp_path):
    r = invoke(runner, "certs", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "client.pem" in r.stdout and "--client-ca" in r.stdout
    assert (tmp_path / "client.pem").is_file() and (tmp_path / "client.key").is_file()
    r = invoke(runner, "certs", str(tmp_path), "--client", "site-b")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "site-b.pem").is_file() and (tmp_path / "site-b.key").is_file()
    err = user_error(invoke(runner, "certs", str(tmp_path / "empty"), "--client", "x"))
    assert "create the CA first" in err


# ---- both commands end to end -------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200")
    env.pop(KEY_ENV, None)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory, target, near_draft):
    """Model directories, certificates, a key, and a ``wanspec worker`` process requiring both
    the key and a client certificate (QUIC on loopback)."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("auth-site")
    dirs = {"target": save_tiny_model(target, root / "target"),
            "draft": save_tiny_model(near_draft, root / "draft")}
    certs = root / "certs"
    r = CliRunner().invoke(app, ["certs", str(certs)])
    assert r.exit_code == 0, r.output
    key = root / "wanspec.key"
    key.write_text("0f1e2d3c4b5a69788796a5b4c3d2e1f0\n")
    log_path = root / "worker.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wanspec", "worker", "--transport", "quic", "--listen",
             "127.0.0.1:0", "--threads", "1", "--draft", str(dirs["draft"]),
             "--cert", str(certs / "server.pem"), "--key", str(certs / "server.key"),
             "--client-ca", str(certs / "ca.pem"), "--auth-key-file", str(key)],
            stdout=subprocess.PIPE, stderr=err, env=_env(), text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        address = None
        while address is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            m = LISTENING.search(line)
            if m:
                assert "authentication: pre-shared key + mutual TLS" in line, line
                address = f"{m.group(1)}:{m.group(2)}"
        assert address, f"worker did not start: {log_path.read_text(errors='replace')[-2000:]}"
        yield {"dirs": dirs, "certs": certs, "key": key, "address": address, "log": log_path}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_controller(runner, site, *extra: str) -> dict:
    c = site["certs"]
    r = invoke(runner, "controller", "--worker", site["address"], "--transport", "quic",
               "--ca", str(c / "ca.pem"), "--target", str(site["dirs"]["target"]),
               "--no-local-draft", "--prompt", PROMPT, "--max-tokens", "12", "--ignore-eos",
               "--json", "--timeout", "10", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def client_cert(site) -> list[str]:
    c = site["certs"]
    return ["--cert", str(c / "client.pem"), "--key", str(c / "client.key")]


def test_the_controller_with_the_key_and_certificate_is_served(runner, site):
    out = run_controller(runner, site, *client_cert(site), "--auth-key-file", str(site["key"]))
    m = out["metrics"]
    assert m["worker_used"] is True and m["draft_passes"]["worker"] > 0


def test_a_controller_with_another_key_is_told_why_and_decodes_alone(runner, site, tmp_path):
    wrong = tmp_path / "wrong.key"
    wrong.write_text("ffffffffffffffffffffffffffffffff\n")
    out = run_controller(runner, site, *client_cert(site), "--auth-key-file", str(wrong))
    m = out["metrics"]
    assert m["worker_used"] is False and m["draft_passes"]["worker"] == 0
    assert m["worker_error"].startswith("authentication failed: the worker's key does not "
                                        "match the controller's")
    deadline = time.monotonic() + 10
    while "controller refused the connection" not in site["log"].read_text(errors="replace"):
        assert time.monotonic() < deadline, site["log"].read_text(errors="replace")[-2000:]
        time.sleep(0.05)


def test_a_controller_without_a_client_certificate_is_told_why(runner, site):
    out = run_controller(runner, site, "--auth-key-file", str(site["key"]))
    m = out["metrics"]
    assert m["worker_used"] is False
    assert "no TLS client certificate was presented" in m["worker_error"]
