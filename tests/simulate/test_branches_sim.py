"""Draft trees in the simulator: ``branches`` reaches the controller, the drivers run a session's
passes on the caches they name (forks copying a prefix), and every output stays the target's.

Whether branches change anything depends on the worker core growing trees; these tests hold
either way (with a core that ignores ``branches`` they check the plumbing and losslessness).
"""

from __future__ import annotations

import json
from heapq import heappop

import pytest

from wanspec.baselines import BASELINES
from wanspec.cli.app import app
from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import DraftFor, Release
from wanspec.emulate.load import Closed, Poisson, summarize
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.engine import (
    FORM,
    WORKER_HELLO,
    RemoteSim,
    controller_config,
    simulate_remote,
)
from wanspec.simulate.load import LoadSim, simulate_load
from wanspec.simulate.models import DraftCache
from wanspec.simulate.sweep import parse_sweep, run_sweep
from wanspec.simulate.worlds import worlds


def test_branches_defaults_to_the_controllers_and_reaches_it():
    assert SimConfig().branches == ControllerConfig().branches
    for n in (0, 3):
        assert controller_config(SimConfig(branches=n), "always").branches == n
    assert "branches" in WORKER_HELLO.capabilities


@pytest.mark.parametrize("cfg", [
    SimConfig(requests=4, max_tokens=48, alpha=0.6),
    SimConfig(requests=4, max_tokens=48, match="markov", alpha=0.7, burst=0.8, jitter_ms=2.0),
    SimConfig(requests=4, max_tokens=48, alpha=0.5, rank2=0.2, rank3=0.2, rank4=0.2),
    SimConfig(requests=3, max_tokens=40, alpha=0.8, loss=0.1, bandwidth_mbit=1.0, gamma=2,
              draft_per_token_ms=0.3, lookahead=2),
])
def test_every_mode_is_lossless_with_and_without_branches(cfg):
    recs = run_sweep(cfg, [parse_sweep("rtt=0,60,150"), parse_sweep("branches=0,1,4,16")],
                     POLICIES, jobs=1)
    assert len(recs) == 3 * 4 * (len(BASELINES) + len(POLICIES))
    assert all(r["identical_to_target_only"] for r in recs)
    assert {r["branches"] for r in recs} == {0, 1, 4, 16}
    # the baselines never use the worker: one run serves every number of branches
    for mode in BASELINES:
        by_branches = {r["branches"]: r["tpot_ms_mean"] for r in recs
                       if r["mode"] == mode and r["rtt_ms"] == 0}
        assert len(set(by_branches.values())) == 1, mode


@pytest.mark.parametrize("mode", ["remote", "always", "adaptive"])
@pytest.mark.parametrize("load", [Closed(8), Poisson(300.0, seed=3)])
def test_under_load_with_branches_every_output_is_the_targets(mode, load):
    cfg = SimConfig(requests=16, max_tokens=24, alpha=0.6, rtt_ms=80.0)  # 16 branches
    ws = worlds(cfg)
    rec = summarize(simulate_load(cfg, mode, ws, load), [w.reference() for w in ws], 50.0)
    assert rec["identical_to_target_only"] and rec["tokens"] == 16 * 24


def _lanes(world) -> tuple[DraftFor, DraftFor, DraftFor]:
    """What a worker growing a tree asks its driver for: its main lane's first pass (the
    prompt), then, once that ran, the main lane's next pass and a branch forking at the
    prompt's end with the target's token there (copying the main lane's prefix)."""
    p, t = world.n_prompt, world.target
    first = DraftFor(1, RunDraft(1, Site.WORKER, 0, tuple(t[:p])), SamplingParams())
    wrong = world.draft(DraftCache(), 0, t[:p])[0] if not world.match[p] else t[p] + 1
    main = DraftFor(1, RunDraft(2, Site.WORKER, p, (wrong,)), SamplingParams())
    branch = DraftFor(1, RunDraft(3, Site.WORKER, p, (t[p],)), SamplingParams(), cache=2,
                      copy_from=0)
    return first, main, branch


def _pass(sim, expect_t: float):
    """Run the worker pass formed now; return its results."""
    t, priority, _, form, arg = heappop(sim.heap)  # formed after the instant's other events
    assert (t, priority) == (expect_t, FORM)
    form(t, arg)
    assert sim.wrunning and not sim.wjobs
    end, _, _, done_fn, done = heappop(sim.heap)
    done_fn(end, done)  # (unknown to the worker core: counted as wasted)
    return end, done


def test_the_discrete_event_driver_batches_a_sessions_lanes_on_their_own_caches():
    cfg = SimConfig(requests=1, max_tokens=16, draft_ms=4.0, draft_per_token_ms=0.5)
    ws = worlds(cfg)
    w, p = ws[0], ws[0].n_prompt
    first, main, branch = _lanes(w)
    sim = RemoteSim(cfg, "remote", ws)
    sim._w_exec([first], 0.0)
    t, done = _pass(sim, 0.0)
    assert t == pytest.approx((4.0 + 0.5 * (p - 1)) / 1000)
    ref = DraftCache()
    assert done == [(1, DraftDone(1, *w.draft(ref, 0, w.target[:p])))]
    assert len(done[0][1].alternatives) == len(done[0][1].alt_probs) == 3
    sim._w_exec([main, branch], t)
    t2, done = _pass(sim, t)
    assert t2 == pytest.approx(t + 0.004)  # both lanes in one pass, the cost of one
    assert set(sim.wcaches[1]) == {0, 2}
    fork = DraftCache()
    fork.copy_from(ref, p)
    assert done[0] == (1, DraftDone(2, *w.draft(ref, p, main.run.tokens)))
    # the branch took the main lane's prefix, then the target's token: back on the prefix
    assert done[1] == (1, DraftDone(3, *w.draft(fork, p, (w.target[p],))))
    assert done[1][1].token == (w.target[p + 1] if w.match[p + 1] else w.wrong[p + 1])
    sim._w_exec([main], t2)  # waiting when the session is released
    sim._w_exec([Release(1)], t2)
    assert 1 not in sim.wcaches and not sim.wjobs and not sim.wbatcher.waiting


def test_the_load_driver_copies_before_the_pass_and_withdraws_every_waiting_pass():
    cfg = SimConfig(requests=1, max_tokens=16, rtt_ms=30.0)
    ws = worlds(cfg)
    sim = LoadSim(cfg, "remote", ws, Closed(1))
    first, main, branch = _lanes(ws[0])
    sim._w_exec([first], 0.0)
    key = next(iter(sim.wkeys[1]))
    assert sim.wdev.jobs[key][0] is first
    sim._start_pass(sim.wdev, 0.0, sim._worker_done)  # the main lane's first pass runs
    sim._w_exec([main, branch], 0.0)  # the next ones wait for the device
    assert len(sim.wkeys[1]) == 2 and key not in sim.wkeys[1]
    sim._w_exec([Release(1)], 0.0)
    assert 1 not in sim.wcaches and not sim.wdev.jobs and not sim.wdev.batcher.waiting


def test_the_cli_takes_branches_as_a_flag_and_a_sweep_axis(runner):
    base = ["simulate", "--requests", "2", "--max-tokens", "16", "--policy", "remote,always",
            "--json"]
    r = runner.invoke(app, [*base, "--branches", "2"])
    assert r.exit_code == 0, r.output
    assert {x["branches"] for x in json.loads(r.stdout)} == {2}
    r = runner.invoke(app, [*base, "--sweep", "branches=0,3"])
    assert r.exit_code == 0, r.output
    assert {x["branches"] for x in json.loads(r.stdout)} == {0, 3}
    r = runner.invoke(app, [*base, "--sweep", "rank2=0.5,0.6"])
    assert r.exit_code == 0, r.output
    assert {x["rank2"] for x in json.loads(r.stdout)} == {0.5, 0.6}
    r = runner.invoke(app, ["simulate", "--branches", "-1"])
    assert r.exit_code != 0 and "branches must be >= 0" in r.output
    r = runner.invoke(app, ["simulate", "--sweep", "rank3=0.9"])
    assert r.exit_code != 0 and "rank2 + rank3 + rank4 must be <= 1" in r.output


def test_simulate_remote_with_branches_reports_like_without():
    cfg = SimConfig(requests=3, max_tokens=32, rtt_ms=100.0, branches=4)
    res = simulate_remote(cfg, "remote", worlds(cfg))
    assert all(r.lossless for r in res.requests)
    assert all(r.worker is not None for r in res.requests)
