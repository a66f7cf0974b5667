"""The worker's /metrics and /health (``wanspec worker --metrics-port``), and the service flags
of the command line (refused in one line before any model loads)."""

from __future__ import annotations

import time

import httpx
from serve_support import API_KEY, MODEL
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from wanspec.cli.app import app as cli
from wanspec.serve.worker_http import create_worker_app


def samples(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels or s.name.endswith("_count")}


def test_worker_metrics_follow_its_sessions(worker, service):
    http = TestClient(create_worker_app(worker.service))
    before = samples(http.get("/metrics").text)
    r = httpx.post(f"{service.url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": MODEL, "prompt": "ROMEO.\n", "max_tokens": 10,
                         "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200
    after = samples(http.get("/metrics").text)
    assert after["wanspec_worker:connections"] == 1  # the controller's link
    assert after["wanspec_worker:sessions_started_total"] == \
        before["wanspec_worker:sessions_started_total"] + 1
    assert after["wanspec_worker:drafts_sent_total"] > before["wanspec_worker:drafts_sent_total"]
    passes = after["wanspec_worker:draft_passes_total"] - before["wanspec_worker:draft_passes_total"]
    assert passes > 0
    assert after["wanspec_worker:batch_size_count"] - before["wanspec_worker:batch_size_count"] \
        == passes  # one batch-size observation per draft pass
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["connections"] == 1
    assert health["max_batch"] == worker.service.max_batch
    # once the worker has heard the session end (a moment after the response), it drafts no
    # more: its tree's lanes are gone, and the limit in force is max_batch until 16 passes are
    # measured, then what they say (fewer on a CPU, where each sequence costs its own compute)
    deadline = time.monotonic() + 10
    while worker.service.load.sessions + worker.service.load.branches and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    quiet = samples(http.get("/metrics").text)
    assert quiet["wanspec_worker:branch_lanes"] == 0
    seats = quiet["wanspec_worker:branch_seats"]
    assert 1 <= seats <= worker.service.max_batch and seats == worker.service.load.seats
    assert http.get("/health").json()["branch_seats"] == seats


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_service_flags_are_checked_before_models_load(runner, narrow_stderr):
    base = ["controller", "--worker", "127.0.0.1:9", "--target", "/nonexistent/target"]
    one_line_error(runner.invoke(cli, [*base, "--listen", "nohost"]), "has no port")
    one_line_error(runner.invoke(cli, [*base, "--listen", "127.0.0.1:99999"]), "bad port")
    one_line_error(runner.invoke(cli, [*base, "--listen", "127.0.0.1:0", "--grace", "-1"]),
                   "--grace must be >= 0")
    one_line_error(runner.invoke(cli, [*base, "--listen", "127.0.0.1:0", "--prompt", "x"]),
                   "got --listen and --prompt")
    one_line_error(runner.invoke(cli, [*base, "--listen", "127.0.0.1:0", "--api-key", " "]),
                   "--api-key must not be empty")
    for flag, value in (("--max-request-bytes", "10"), ("--max-prompts-per-request", "0"),
                        ("--max-queued-requests", "0")):
        one_line_error(runner.invoke(cli, [*base, "--listen", "127.0.0.1:0", flag, value]),
                       f"{flag} must be >= ")
    one_line_error(runner.invoke(cli, ["worker", "--draft", "/nonexistent/draft",
                                       "--metrics-port", "70000"]),
                   "--metrics-port must be 0-65535")
