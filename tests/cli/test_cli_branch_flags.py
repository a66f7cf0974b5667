"""Draft-tree flags: ``--branches`` (controller, emulate, generate --mode remote) reaches
``ControllerConfig.branches`` and ``--max-branches`` (worker) ``WorkerLimits.max_branches``; bad
values are one-line errors before any model loads."""

from __future__ import annotations

import pytest

import wanspec.api as api_mod
import wanspec.cli.emulate as emulate_mod
import wanspec.cli.loading as loading_mod
import wanspec.cli.sites as sites_mod
import wanspec.runtime.inproc as inproc_mod
from wanspec.cli.app import app
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import WorkerLimits
from wanspec.emulate.runner import Emulation, EmulationConfig
from wanspec.models.backend import CausalLM


class Reached(Exception):
    """The flags got where they were going: the command stops there."""


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a model was loaded before every flag was checked")

    monkeypatch.setattr(CausalLM, "__init__", refuse)


@pytest.mark.parametrize("args, needle", [
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--branches", "-1"],
     "--branches must be >= 0, got -1"),
    (["controller", "--worker", "127.0.0.1:1", "-p", "x", "--branches", "65"],
     "--branches must be at most 64, got 65"),
    (["emulate", "--branches", "-1"], "--branches must be >= 0, got -1"),
    (["generate", "-p", "x", "--mode", "remote", "--branches", "1000"],
     "--branches must be at most 64"),
    (["worker", "--max-branches", "-1"], "--max-branches must be >= 0 (0: a single chain), got -1"),
])
def test_bad_branch_counts_are_one_line_errors_before_models_load(runner, narrow_stderr,
                                                                  no_model_loads, args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr


def test_the_defaults_are_the_configs():
    assert ControllerConfig().branches == ControllerConfig.branches
    assert EmulationConfig().branches == ControllerConfig().branches


@pytest.mark.parametrize("given, want", [([], ControllerConfig().branches),
                                         (["--branches", "0"], 0), (["--branches", "7"], 7)])
def test_controller_branches_reach_the_controller_config(runner, monkeypatch, target, given,
                                                         want):
    seen = {}

    class Engine(api_mod.RemoteEngine):
        def __init__(self, *args, config, **kwargs):
            seen["config"] = config
            raise Reached

    monkeypatch.setattr(sites_mod, "load_models", lambda *a, **k: (target, None))
    monkeypatch.setattr(api_mod, "RemoteEngine", Engine)
    r = runner.invoke(app, ["controller", "--worker", "127.0.0.1:1", "-p", "x", *given])
    assert isinstance(r.exception, Reached), r.output
    assert seen["config"].branches == want


@pytest.mark.parametrize("given, want", [([], ControllerConfig().branches),
                                         (["--branches", "0"], 0), (["--branches", "2"], 2)])
def test_generate_remote_branches_reach_the_controller_config(runner, monkeypatch, given, want):
    seen = {}

    def deployment(*args, config, **kwargs):
        seen["config"] = config
        raise Reached

    monkeypatch.setattr(loading_mod, "load_models", lambda *a, **k: (object(), object()))
    monkeypatch.setattr(inproc_mod, "InprocDeployment", deployment)
    r = runner.invoke(app, ["generate", "-p", "x", "--mode", "remote", *given])
    assert isinstance(r.exception, Reached), r.output
    assert seen["config"].branches == want


@pytest.mark.parametrize("given, want", [([], ControllerConfig().branches),
                                         (["--branches", "0"], 0), (["--branches", "5"], 5)])
def test_emulate_branches_reach_every_remote_run(runner, monkeypatch, given, want):
    seen = {}

    def emulation(target, draft, cfg):
        seen["cfg"] = cfg
        raise Reached

    monkeypatch.setattr(emulate_mod, "load_models", lambda *a, **k: (object(), object()))
    monkeypatch.setattr(emulate_mod, "Emulation", emulation)
    r = runner.invoke(app, ["emulate", "--num-prompts", "1", *given])
    assert isinstance(r.exception, Reached), r.output
    cfg = seen["cfg"]
    assert cfg.branches == want
    # one request at a time and under load, the remote policies run with that config
    for policy in ("remote", "adaptive"):
        assert Emulation(None, None, cfg)._controller_config(policy).branches == want


@pytest.mark.parametrize("given, want", [([], WorkerLimits().max_branches),
                                         (["--max-branches", "0"], 0),
                                         (["--max-branches", "3"], 3)])
def test_worker_max_branches_reach_its_limits(runner, monkeypatch, given, want):
    seen = {}

    def run_worker(*, limits, **kwargs):
        seen["limits"] = limits
        raise Reached

    monkeypatch.setattr(sites_mod, "run_worker", run_worker)
    r = runner.invoke(app, ["worker", *given])
    assert isinstance(r.exception, Reached), r.output
    assert seen["limits"].max_branches == want
