"""Draft trees in the simulator: ``branches`` reaches the controller, the drivers run a session's
passes on the caches they name (forks copying a prefix), and every output stays the target's.

Whether branches change anything depends on the worker core growing trees; these tests hold
either way (with a core that ignores ``branches`` they check the plumbing and losslessness).
"""

from __future__ import annotations

import json

import pytest

from wanspec.baselines import BASELINES
from wanspec.cli.app import app
from wanspec.core.actions import DraftDone, RunDraft, Site
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import DraftFor, Release
from wanspec.emulate.load import Closed, Poisson, summarize
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.engine import WORKER_HELLO, RemoteSim, controller_config, simulate_remote
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
])
def test_every_mode_is_lossless_with_and_without_branches(cfg):
    recs = run_sweep(cfg, [parse_sweep("rtt=0,60,150"), parse_sweep("branches=0,1,4")],
                     POLICIES, jobs=1)
    assert len(recs) == 3 * 3 * (len(BASELINES) + len(POLICIES))
    assert all(r["identical_to_target_only"] for r in recs)
    assert {r["branches"] for r in recs} == {0, 1, 4}
    # the baselines never use the worker: one run serves every number of branches
    for mode in BASELINES:
        by_branches = {r["branches"]: r["tpot_ms_mean"] for r in recs
                       if r["mode"] == mode and r["rtt_ms"] == 0}
        assert len(set(by_branches.values())) == 1, mode


@pytest.mark.parametrize("mode", ["remote", "always", "adaptive"])
@pytest.mark.parametrize("load", [Closed(8), Poisson(300.0, seed=3)])
def test_under_load_with_branches_every_output_is_the_targets(mode, load):
    cfg = SimConfig(requests=16, max_tokens=24, alpha=0.6, rtt_ms=80.0, branches=4)
    ws = worlds(cfg)
    rec = summarize(simulate_load(cfg, mode, ws, load), [w.reference() for w in ws], 50.0)
    assert rec["identical_to_target_only"] and rec["tokens"] == 16 * 24


def _fork_actions(world, op: int) -> list[DraftFor]:
    """A main lane on the prompt plus two drafts, and a branch forking at the prompt's end with
    the target's token there: what a worker growing a tree asks its driver for."""
    p = world.n_prompt
    run = RunDraft(op, Site.WORKER, 0, tuple(world.target[:p]))
    branch = RunDraft(op + 1, Site.WORKER, p, (world.target[p],))
    return [DraftFor(1, run, SamplingParams()),
            DraftFor(1, branch, SamplingParams(), cache=2, copy_from=0)]


def test_the_discrete_event_driver_runs_each_pass_on_its_lane_cache():
    cfg = SimConfig(requests=1, max_tokens=16)
    ws = worlds(cfg)
    w, p = ws[0], ws[0].n_prompt
    sim = RemoteSim(cfg, "remote", ws)
    sim._w_exec(_fork_actions(w, 1), 0.0)
    assert set(sim.wcaches[1]) == {0, 2}
    done = [e[3][1] for e in sorted(sim.heap) if isinstance(e[3], tuple)]
    main = DraftCache()
    assert done[0] == DraftDone(1, *w.draft(main, 0, w.target[:p]))
    assert len(done[0].alternatives) == len(done[0].alt_probs) == 3
    # the branch took the main lane's prefix, then the target's token: back on the prefix
    assert done[1] == DraftDone(2, *w.draft(main, p, (w.target[p],)))
    sim._w_exec([Release(1)], 0.0)
    assert 1 not in sim.wcaches


def test_the_load_driver_copies_before_the_pass_and_withdraws_every_waiting_pass():
    cfg = SimConfig(requests=1, max_tokens=16, rtt_ms=30.0)
    ws = worlds(cfg)
    sim = LoadSim(cfg, "remote", ws, Closed(1))
    actions = _fork_actions(ws[0], 1)
    sim._w_exec(actions[:1], 0.0)
    key = next(iter(sim.wkeys[1]))
    assert sim.wdev.jobs[key][0] is actions[0]
    sim._start_pass(sim.wdev, 0.0, sim._worker_done)  # the main lane's pass runs
    sim._w_exec(actions[1:], 0.0)  # the fork waits for the device
    assert len(sim.wkeys[1]) == 1 and key not in sim.wkeys[1]
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
