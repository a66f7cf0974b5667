"""The simulator under load: many requests at once on one busy accelerator and one worker."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from wanspec.cli.app import app
from wanspec.core.batcher import BatchLimits
from wanspec.emulate.load import Closed, Poisson, summarize
from wanspec.simulate.config import SimConfig
from wanspec.simulate.load import run_load, simulate_load
from wanspec.simulate.worlds import worlds

CFG = SimConfig(requests=24, max_tokens=24, alpha=0.7, rtt_ms=30.0)


def record(mode, load, cfg=CFG, **kw):
    ws = worlds(cfg)
    return summarize(simulate_load(cfg, mode, ws, load, **kw), [w.reference() for w in ws], 50.0)


@pytest.mark.parametrize("mode", ["target", "sd", "remote", "always", "entropy", "adaptive"])
@pytest.mark.parametrize("load", [Closed(1), Closed(8), Poisson(200.0, seed=2)])
def test_every_mode_under_every_load_is_lossless(mode, load):
    rec = record(mode, load)
    assert rec["identical_to_target_only"] and rec["tokens"] == 24 * 24


def test_one_client_is_one_request_at_a_time_and_more_clients_share_passes():
    one, eight = record("target", Closed(1)), record("target", Closed(8))
    assert one["busy_mean_batch"] == 1.0 and eight["busy_mean_batch"] == 8.0
    # memory-bound: eight clients get nearly eight times the throughput
    assert 7.0 < eight["throughput_tok_s"] / one["throughput_tok_s"] < 8.0
    assert one["tpot_ms_p50"] == pytest.approx(30.0, rel=1e-3)  # 30 ms a decode (+ KV), alone


def test_the_worker_batches_its_sessions_and_remote_requests_ride_passes():
    rec = record("remote", Closed(8))
    assert rec["worker_mean_batch"] > 2.0
    assert rec["busy_mean_batch"] > 4.0  # waiting requests join passes that run anyway


def test_batch_limits_cap_every_pass():
    rec = record("target", Closed(8), limits=BatchLimits(max_sequences=3))
    assert rec["busy_mean_batch"] <= 3.0


def test_the_worker_has_its_own_sequence_limit():
    """The worker's passes carry sessions and their draft trees' branch lanes up to its own
    limit (wanspec worker --max-batch), not the busy site's: the sites are different devices."""
    small_busy = record("adaptive", Closed(8), limits=BatchLimits(max_sequences=3))
    assert small_busy["busy_mean_batch"] <= 3.0
    assert small_busy["worker_mean_batch"] > 8.0  # sessions plus branch lanes
    small_worker = record("adaptive", Closed(8), worker_max_batch=4)
    assert small_worker["worker_mean_batch"] <= 4.0
    assert small_worker["identical_to_target_only"] and small_busy["identical_to_target_only"]


def test_admission_trades_time_to_first_token_for_the_running_requests_tpot():
    """Requests arriving faster than the busy site serves them (100/s, ~54/s of capacity):
    without admission all start and every pass also carries newcomers' prefills; under a 34 ms
    target, later ones wait to start (never refused) and the running ones decode faster."""
    cfg = SimConfig(requests=128, max_tokens=24, alpha=0.7)
    load = Poisson(100.0, seed=1)
    free = record("target", load, cfg=cfg)
    held = record("target", load, cfg=cfg, slo_tpot_ms=34.0)
    assert free["tpot_ms_p50"] > 60.0
    assert held["tpot_ms_p50"] < 0.7 * free["tpot_ms_p50"]
    assert held["ttft_ms_p95"] > 5 * free["ttft_ms_p95"]  # the wait moved to the start
    assert held["busy_mean_batch"] < free["busy_mean_batch"]
    assert held["identical_to_target_only"] and held["requests"] == 128


def test_run_load_gives_baselines_best_sd_and_policies_per_load_and_rtt():
    records = run_load(CFG, [Closed(1), Closed(4)], ("adaptive",), rtts=(0.0, 60.0),
                       sd_gammas=(2, 4))
    keys = [(r["load"], r["rtt_ms"], r["mode"]) for r in records]
    assert keys == [(c, rtt, m) for c in ("c=1", "c=4") for rtt in (0.0, 60.0)
                    for m in ("target", "sd-best", "sd", "adaptive")]
    for r in records:
        assert r["identical_to_target_only"]
        best = next(b for b in records if b["load"] == r["load"] and b["mode"] == "sd-best")
        assert r["throughput_vs_best_sd"] == pytest.approx(
            r["throughput_tok_s"] / best["throughput_tok_s"])


def test_simulate_cli_under_load():
    r = CliRunner().invoke(app, ["simulate", "--concurrency", "1,4", "--sweep", "0,50",
                                 "--requests", "8", "--max-tokens", "16", "--policy", "adaptive",
                                 "--json"])
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert {(x["load"], x["rtt_ms"]) for x in records} == {
        (c, rtt) for c in ("c=1", "c=4") for rtt in (0.0, 50.0)}
    r = CliRunner().invoke(app, ["simulate", "--concurrency", "2", "--requests", "4",
                                 "--max-tokens", "8", "--policy", "remote"])
    assert r.exit_code == 0, r.output
    assert "c=2, RTT 40 ms" in r.stdout and "Lossless" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--concurrency", "0"], "client counts must be >= 1"),
    (["--concurrency", "2", "--sweep", "alpha=0.5,0.7"], "may only list RTTs"),
    (["--request-rate", "-1"], "--request-rate must be > 0"),
    (["--concurrency", "2", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["--concurrency", "2", "--worker-max-batch", "0"], "--worker-max-batch must be >= 1"),
])
def test_simulate_load_flags_are_checked(args, needle):
    r = CliRunner().invoke(app, ["simulate", *args])
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.stderr.split())


def test_under_load_a_round_trip_past_the_handshake_deadline_decodes_without_the_worker():
    cfg = SimConfig(requests=4, max_tokens=8, rtt_ms=12_000.0)
    rec = record("adaptive", Closed(2), cfg=cfg)
    assert rec["identical_to_target_only"] and rec["tokens"] == 4 * 8


def test_more_clients_than_requests_is_said():
    r = CliRunner().invoke(app, ["simulate", "--concurrency", "1,4", "--requests", "2",
                                 "--max-tokens", "4", "--policy", "adaptive"])
    assert r.exit_code == 0, r.output
    assert "--concurrency 4 with 2 requests: at most 2 are ever in flight" in r.output
    r = CliRunner().invoke(app, ["simulate", "--concurrency", "2", "--requests", "2",
                                 "--max-tokens", "4", "--policy", "adaptive"])
    assert "ever in flight" not in r.output
