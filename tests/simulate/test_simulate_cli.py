"""``wanspec simulate`` through Typer's CliRunner: tables, JSON, CSV, PNG, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from wanspec.baselines import BASELINES
from wanspec.cli.app import app
from wanspec.simulate.config import POLICIES

FAST = ["--requests", "2", "--max-tokens", "24"]
TRACE = Path(__file__).parent / "data" / "small_trace.jsonl"


def invoke(runner, *args: str):
    return runner.invoke(app, ["simulate", *FAST, *args], catch_exceptions=True)


def test_single_point_prints_the_mode_table(runner):
    r = invoke(runner, "--rtt", "40ms", "--alpha", "0.8")
    assert r.exit_code == 0, r.output
    for needle in ("RTT 40 ms", "target-only", "standard SD (g=4)", "best SD (g=", "dynamic SD",
                   *POLICIES, "Lossless"):
        assert needle in r.output


def test_sweep_json_csv_and_plot(runner, tmp_path):
    png, csv_path = tmp_path / "s.png", tmp_path / "s.csv"
    r = invoke(runner, "--sweep", "rtt=0:20:10", "--sweep", "alpha=0.6,0.9", "--json",
               "--csv", str(csv_path), "--plot", str(png))
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert len(records) == 3 * 2 * (len(BASELINES) + len(POLICIES))
    keys = {(x["rtt_ms"], x["alpha"], x["mode"]) for x in records}
    assert len(keys) == len(records)
    assert {x["rtt_ms"] for x in records} == {0.0, 10.0, 20.0}
    assert all(x["identical_to_target_only"] for x in records)
    for x in records:
        assert {"tpot_ms_mean", "latency_vs_best_sd", "busy_site_draft_passes_vs_best_sd",
                "latency_vs_standard_sd", "best_sd_gamma", "stall_ms_per_token",
                "worker_draft_passes_per_token"} <= set(x)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(records) and rows[0]["mode"] == "target"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_sweep_table_and_policy_subset(runner):
    r = invoke(runner, "--sweep", "rtt=0,50", "--policy", "remote,adaptive")
    assert r.exit_code == 0, r.output
    assert all(m in r.output for m in ("lat", "busy", "stall")) and "always" not in r.output


def test_trace_replay_from_the_cli(runner):
    r = invoke(runner, "--trace", str(TRACE), "--json", "--policy", "entropy")
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert {x["match"] for x in recs} == {"trace"}
    assert all(x["identical_to_target_only"] for x in recs)


@pytest.mark.parametrize("args,needle", [
    (["--sweep", "rtt=0:10:0"], "the step must be > 0"),
    (["--sweep", "speed=1,2"], "unknown parameter 'speed'"),
    (["--sweep", "alpha=0.5,1.2"], "alpha must be >= 0 and < 1"),
    (["--sweep", "gamma=1.5"], "gamma must be a whole number"),
    (["--sweep", "rtt=1", "--sweep", "rtt=2"], "given twice"),
    (["--rtt", "fast"], "invalid --rtt 'fast'"),
    (["--bandwidth", "lots"], "invalid --bandwidth 'lots'"),
    (["--bandwidth", "20Tbit/s"], "--bandwidth must be 0 (unlimited) or between 1 kbit/s and 10 Tbit/s"),
    (["--alpha", "1.5"], "alpha must be >= 0 and < 1"),
    (["--gamma", "0"], "gamma must be >= 1"),
    (["--policy", "greedy"], "unknown policy 'greedy'"),
    (["--match", "zipf"], "unknown --match 'zipf'"),
    (["--match", "trace"], "--match trace needs --trace FILE"),
    (["--match", "markov", "--trace", str(TRACE)], "cannot be combined with --match markov"),
    (["--trace", "/nonexistent/t.jsonl"], "cannot read trace"),
    (["--loss", "2"], "loss must be"),
    (["--jobs", "-1"], "--jobs must be >= 0"),
])
def test_bad_values_are_one_line_errors(runner, narrow_stderr, args, needle):
    r = invoke(runner, *args)
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    err = r.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in " ".join(err.split()), err
    assert r.stdout == ""


def test_unwritable_outputs_are_user_errors(runner, narrow_stderr, tmp_path):
    r = invoke(runner, "--csv", str(tmp_path / "missing" / "x.csv"))
    assert r.exit_code == 2 and "cannot write" in r.stderr


@pytest.mark.parametrize("args", [
    ["--bandwidth", "100"], ["--bandwidth", "100Mbit/s"], ["--bandwidth", "12.5MB/s"],
    ["--sweep", "bandwidth=100"], ["--sweep", "bandwidth=12.5MB/s"], ["--bandwidth", "100mbps"],
], ids=" ".join)
def test_one_bandwidth_grammar_for_flags_and_sweeps(runner, args):
    """A bare number is Mbit/s and bytes are bytes, whether given as a flag or a sweep value."""
    r = invoke(runner, "--policy", "remote", "--json", *args)
    assert r.exit_code == 0, r.output
    assert {x["bandwidth_mbit"] for x in json.loads(r.stdout)} == {100.0}


def test_the_header_shows_the_link(runner):
    r = invoke(runner, "--policy", "remote", "--jitter", "3ms", "--bandwidth", "1Gbit")
    assert r.exit_code == 0, r.output
    assert "jitter 3 ms, bandwidth 1 Gbit/s" in " ".join(r.output.split())
