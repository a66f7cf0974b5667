"""``wanspec worker``/``controller`` split the CPUs with another site on this machine and say so
in one line, before any model loads; they unregister when the command ends."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from wanspec.cli.app import app
from wanspec.cli.common import SiteThreads
from wanspec.cli.sites import follow_sites
from wanspec.threads import SiteRegistry


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process may use 2 CPUs, the issue's box, with torch choosing 2 threads."""
    monkeypatch.setattr("wanspec.cli.common.cpu_set", lambda: frozenset({0, 1}))
    monkeypatch.setattr("wanspec.cli.common.cgroup_cpu_limit", lambda: None)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_worker_prints_the_split_when_a_controller_runs(runner, site_registry, cpus):
    SiteRegistry(site_registry, pid=os.getppid()).register("controller", 2, None)
    # the draft directory does not exist: the command stops right after the split
    r = runner.invoke(app, ["worker", "--draft", "/nonexistent/draft"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == (f"wanspec worker: 1 torch thread of the 2 CPUs available, sharing them "
                        f"with the wanspec controller (pid {os.getppid()}) on this machine; "
                        "--threads N overrides")
    assert lines[1].startswith("error: model directory not found")
    assert [p.name for p in site_registry.iterdir()] == [f"{os.getppid()}.json"]  # ours is gone


def test_controller_warns_when_forced_threads_oversubscribe(runner, site_registry, cpus):
    SiteRegistry(site_registry, pid=os.getppid()).register("worker", 2, None)
    r = runner.invoke(app, ["controller", "--worker", "127.0.0.1:1", "--prompt", "x",
                            "--threads", "2", "--target", "/nonexistent/target"])
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines()[0].startswith(
        f"warning: --threads 2 here plus 2 of the wanspec worker (pid {os.getppid()}) exceed "
        "the 2 CPUs available")
    assert "give each --threads 1" in r.stderr


def test_alone_nothing_is_printed(runner, site_registry, cpus):
    r = runner.invoke(app, ["worker", "--draft", "/nonexistent/draft"])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: model directory not found"), r.stderr


def test_a_bad_flag_fails_before_any_split_line(runner, site_registry, cpus):
    SiteRegistry(site_registry, pid=os.getppid()).register("controller", 2, None)
    r = runner.invoke(app, ["worker", "--draft", "/nonexistent/draft", "--max-batch", "0"])
    assert r.stderr == "error: --max-batch must be >= 1, got 0\n"


def test_zero_threads_is_a_one_line_error(runner, cpus):
    r = runner.invoke(app, ["worker", "--threads", "0"])
    assert r.exit_code == 2 and r.stderr == "error: threads must be >= 1, got 0\n"


def test_a_running_worker_shrinks_when_a_controller_starts_and_grows_back(
        site_registry, cpus, capsys):
    site = SiteThreads("worker", None, SiteRegistry(site_registry))
    site.start()
    assert site.threads == 2  # alone
    executor = ThreadPoolExecutor(1)
    assert executor.submit(torch.get_num_threads).result() == 2  # its thread has run torch
    seen: list[int] = []

    async def scenario() -> None:
        following = asyncio.create_task(follow_sites(site, [executor], every_s=0.01))
        peer = SiteRegistry(site_registry, pid=os.getppid())
        peer.register("controller", 1, None)
        await asyncio.sleep(0.1)
        seen.append(executor.submit(torch.get_num_threads).result())
        peer.unregister()
        await asyncio.sleep(0.1)
        seen.append(executor.submit(torch.get_num_threads).result())
        following.cancel()

    try:
        asyncio.run(scenario())
    finally:
        executor.shutdown()
        site.stop()
    assert seen == [1, 2]  # set in the executor's own thread, where the passes run
    err = capsys.readouterr().err
    assert "wanspec worker: 1 torch thread of the 2 CPUs" in err
    assert "wanspec worker: back to 2 torch threads" in err
