"""The remote simulation: lossless for every policy and link, deterministic, counts add up."""

from __future__ import annotations

import pytest

from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.engine import simulate_remote
from wanspec.simulate.records import aggregate
from wanspec.simulate.sweep import parse_sweep, run_sweep
from wanspec.simulate.worlds import worlds

SMALL = SimConfig(requests=3, max_tokens=48, prompt_tokens=10)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("rtt", [0.0, 10.0, 40.0, 100.0, 150.0])
def test_every_policy_is_lossless_across_rtts(policy, rtt):
    cfg = SMALL.with_values({"rtt": rtt, "alpha": 0.7})
    res = simulate_remote(cfg, policy, worlds(cfg))
    assert len(res.requests) == cfg.requests
    assert all(r.lossless for r in res.requests)
    assert all(r.metrics.committed_tokens == cfg.max_tokens for r in res.requests)


@pytest.mark.parametrize("extra", [
    {"jitter": 15.0},
    {"bandwidth": 0.2, "jitter": 3.0},
    {"loss": 0.1, "jitter": 2.0},
    {"alpha": 0.0},
    {"alpha": 0.99, "gamma": 8},
    {"lookahead": 1},
    {"gamma": 1, "max_tokens": 5},
    {"max_tokens": 1},
    {"verify_per_token_ms": 0.0, "draft_ms": 0.0},
    {"separation": 0.0},
])
@pytest.mark.parametrize("policy", POLICIES)
def test_lossless_under_harsh_links_and_odd_parameters(policy, extra):
    cfg = SMALL.with_values({"rtt": 60.0, **extra})
    res = simulate_remote(cfg, policy, worlds(cfg))
    assert all(r.lossless for r in res.requests)


def test_bursty_model_is_lossless_too():
    cfg = SMALL.with_values({"rtt": 30.0})
    from dataclasses import replace

    cfg = replace(cfg, match="markov", burst=0.8)
    for policy in POLICIES:
        assert all(r.lossless for r in simulate_remote(cfg, policy, worlds(cfg)).requests)


def test_runs_are_deterministic_and_independent_of_jobs():
    sweeps = [parse_sweep("rtt=0,50"), parse_sweep("jitter=0,5")]
    one = run_sweep(SMALL, sweeps, POLICIES, jobs=1)
    again = run_sweep(SMALL, sweeps, POLICIES, jobs=1)
    two = run_sweep(SMALL, sweeps, POLICIES, jobs=2)
    assert one == again == two


def test_counts_match_what_the_real_metrics_count():
    cfg = SMALL.with_values({"rtt": 40.0})
    recs = {r["mode"]: r for r in run_sweep(cfg, [], POLICIES, jobs=1)}
    remote = recs["remote"]
    assert remote["busy_site_draft_passes_per_token"] == 0  # no local draft copy
    assert remote["local_windows"] == 0 and remote["remote_windows"] > 0
    for mode in POLICIES:
        r = recs[mode]
        assert r["worker_draft_passes_per_token"] > 0  # the worker's own account (SessionStats)
        assert r["tokens"] == cfg.requests * cfg.max_tokens
        assert r["link_bytes_per_token"] > 0
        assert r["identical_to_target_only"]
    assert recs["target"]["speedup_vs_target"] == 1.0
    assert recs["sd"]["latency_vs_standard_sd"] == 1.0
    assert recs["sd"]["busy_site_draft_passes_vs_standard_sd"] == 1.0
    best = recs["sd-best"]
    assert best["latency_vs_best_sd"] == 1.0 and best["tpot_ms_mean"] <= recs["sd"]["tpot_ms_mean"]
    assert min(best["sd_search_tpot_ms"].values()) == best["tpot_ms_mean"]
    dynamic = recs["sd-dynamic"]
    assert dynamic["identical_to_target_only"] and dynamic["busy_site_draft_passes_per_token"] > 0
    assert recs["target"]["worker_draft_passes_per_token"] is None or \
        recs["target"]["worker_draft_passes_per_token"] == 0


def test_worker_session_stats_are_attached_per_request():
    # a plain chain: every token received was drafted (a branch's first message also carries
    # its first token, an alternative no pass of it drafted)
    cfg = SMALL.with_values({"rtt": 20.0, "branches": 0})
    res = simulate_remote(cfg, "entropy", worlds(cfg))
    for r in res.requests:
        assert r.worker is not None and r.worker.passes >= r.worker.drafted > 0
        assert r.stats is not None and r.stats.remote_received <= r.worker.drafted
    rec = aggregate(res, cfg)
    assert rec["worker_draft_passes_per_token"] == pytest.approx(
        sum(r.worker.passes for r in res.requests) / rec["tokens"])


def test_a_useless_worker_never_makes_remote_slower_than_target_only():
    """alpha = 0: every draft is wrong; the policy must not wait for the worker forever."""
    cfg = SMALL.with_values({"rtt": 80.0, "alpha": 0.0})
    recs = {r["mode"]: r for r in run_sweep(cfg, [], ["remote"], jobs=1)}
    assert recs["remote"]["tpot_ms_mean"] <= recs["target"]["tpot_ms_mean"] * 1.1


def test_requests_share_what_the_controller_learns_and_pace_their_latency_budget():
    """One Estimates per link: acceptance, pass times and the unspent budget carry over."""
    from wanspec.simulate.engine import RemoteSim

    cfg = SMALL.with_values({"rtt": 20.0, "alpha": 0.8})
    sim = RemoteSim(cfg, "adaptive", worlds(cfg))
    sim.run()
    est = sim.estimates
    assert est.unspent_per_token.samples == cfg.requests  # one account closed per request
    assert sum(est.acceptance.trials) > cfg.requests * cfg.max_tokens / 2  # many judged drafts
    assert est.acceptance.pooled == pytest.approx(0.8, abs=0.06)
    assert est.rtt is sim.link.rtt  # the one RTT estimate of the link
    other = RemoteSim(cfg, "entropy", worlds(cfg))
    other.run()
    assert other.estimates.unspent_per_token.samples == 0  # only the adaptive policy paces


@pytest.mark.parametrize("rtt", [0.0, 20.0, 100.0])
@pytest.mark.parametrize("costs", [(30.0, 4.0), (15.0, 5.0)])
def test_adaptive_stops_using_a_useless_draft_within_a_few_tokens(rtt, costs):
    """alpha = 0 at both sites: after a handful of judged drafts it decodes target-only, at the
    busy site and with the worker's drafts alike, and stays there for the requests that follow."""
    from wanspec.simulate.engine import RemoteSim

    target_ms, draft_ms = costs
    # useless runner-ups too (else a draft tree's branches catch most corrections)
    cfg = SMALL.with_values({"rtt": rtt, "alpha": 0.0, "target_ms": target_ms,
                             "draft_ms": draft_ms, "requests": 6, "max_tokens": 64,
                             "rank2": 0.0, "rank3": 0.0, "rank4": 0.0})
    res = RemoteSim(cfg, "adaptive", worlds(cfg)).run()
    metrics = [r.metrics for r in res.requests]
    assert sum(m.draft_passes["controller"] for m in metrics) <= 2
    assert sum(m.drafted_tokens for m in metrics) <= 4  # drafts from either site ever verified
    assert all(m.drafted_tokens == 0 for m in metrics[1:])
    recs = {r["mode"]: r for r in run_sweep(cfg, [], ["adaptive"], jobs=1)}
    assert recs["adaptive"]["speedup_vs_target"] >= 0.995


@pytest.mark.parametrize("policy", POLICIES)
def test_a_round_trip_past_the_handshake_deadline_decodes_without_the_worker(policy):
    """At 10 s or more no worker completes the handshake (its deadline): the requests decode at
    the busy site alone, as the runtime's do, instead of waiting for a link that never comes."""
    cfg = SMALL.with_values({"rtt": 12_000.0})
    res = simulate_remote(cfg, policy, worlds(cfg))
    assert len(res.requests) == cfg.requests and all(r.lossless for r in res.requests)
    assert res.link_messages > 0  # it tried
    assert all(r.stats.remote_windows == 0 for r in res.requests)
