"""Thread split between wanspec sites on one machine (wanspec.threads): the decision, pure, and
the registry of live sites it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wanspec.threads import (Peer, SiteRegistry, available_cpus, cgroup_cpu_limit,
                             plan_threads)

WORKER = Peer(pid=101, role="worker", threads=1)
CONTROLLER = Peer(pid=202, role="controller", threads=2)


@pytest.mark.parametrize("available, default, explicit, peers, threads", [
    (2, 2, None, [], None),                  # alone: torch's own choice, untouched
    (8, 4, None, [], None),                  # torch chose fewer (physical cores): kept
    (2, 8, None, [], 2),                     # torch saw 8 but a quota allows 2
    (2, 2, None, [WORKER], 1),               # the box: half each
    (3, 3, None, [WORKER], 1),               # odd: rounded down, never oversubscribed
    (16, 16, None, [WORKER], 8),
    (16, 4, None, [WORKER], 4),              # a share above torch's choice: torch's choice
    (2, 2, None, [WORKER, CONTROLLER], 1),   # more sites than CPUs: still at least one
    (12, 12, None, [WORKER, CONTROLLER], 4),
    (2, 2, 2, [WORKER], 2),                  # explicit always wins (with a warning, below)
    (8, 8, 3, [WORKER], 3),
])
def test_plan_threads_table(available, default, explicit, peers, threads):
    plan = plan_threads(role="controller", available=available, default=default,
                        explicit=explicit, peers=peers)
    assert plan.threads == threads


def test_split_is_one_line_naming_the_peer_and_the_override():
    plan = plan_threads(role="worker", available=2, default=2, explicit=None, peers=[CONTROLLER])
    assert plan.message == ("wanspec worker: 1 torch thread of the 2 CPUs available, sharing "
                            "them with the wanspec controller (pid 202) on this machine; "
                            "--threads N overrides")


@pytest.mark.parametrize("available, explicit, peers, fix", [
    (2, 2, [WORKER], "give each --threads 1"),           # 2 + 1 > 2
    (4, 2, [CONTROLLER, WORKER], "give each --threads 1"),  # 2 + 2 + 1 > 4
    (2, 4, [], "use --threads 2 or fewer"),               # alone, more threads than CPUs
])
def test_forced_oversubscription_warns_with_the_fix(available, explicit, peers, fix):
    plan = plan_threads(role="worker", available=available, default=available,
                        explicit=explicit, peers=peers)
    assert plan.threads == explicit
    assert plan.message is not None and plan.message.startswith("warning: ")
    assert fix in plan.message and "\n" not in plan.message


@pytest.mark.parametrize("available, explicit, peers", [
    (4, 2, [WORKER]),      # 2 + 1 <= 4
    (2, 2, []),
])
def test_explicit_threads_that_fit_are_silent(available, explicit, peers):
    plan = plan_threads(role="worker", available=available, default=available,
                        explicit=explicit, peers=peers)
    assert plan.message is None


@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000\n", 2),
    ("50000 100000\n", 1), ("garbage\n", None)])
def test_cgroup_quota(tmp_path, text, cpus):
    (tmp_path / "cpu.max").write_text(text)
    assert cgroup_cpu_limit(tmp_path / "cpu.max") == cpus


def test_cgroup_quota_missing_file(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cpus_takes_affinity_then_quota():
    assert available_cpus(frozenset({0, 1, 2, 3}), None) == 4
    assert available_cpus(frozenset({0, 1, 2, 3}), 2) == 2
    assert available_cpus(frozenset({0}), 8) == 1
    assert available_cpus(None, None) == (os.cpu_count() or 1)


def test_peers_on_other_cpus_do_not_share():
    assert not Peer(1, "worker", 1, frozenset({2, 3})).shares(frozenset({0, 1}))
    assert Peer(1, "worker", 1, frozenset({1, 2})).shares(frozenset({0, 1}))
    assert Peer(1, "worker", 1, None).shares(frozenset({0, 1}))


# ---- the registry ------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_registry_sees_live_peers_and_drops_stale_ones(tmp_path):
    me = SiteRegistry(tmp_path)
    me.register("worker", 2, frozenset({0, 1}))
    # a live peer: the process that runs pytest's parent, registered as a controller
    SiteRegistry(tmp_path, pid=os.getppid()).register("controller", 1, None)
    # a stale entry: its process has exited
    SiteRegistry(tmp_path, pid=dead_pid()).register("worker", 2, None)
    assert me.peers() == [Peer(os.getppid(), "controller", 1, None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{os.getpid()}.json", f"{os.getppid()}.json"])  # the stale file is gone
    me.unregister()
    assert not (tmp_path / f"{os.getpid()}.json").exists()
    assert SiteRegistry(tmp_path, pid=os.getppid()).peers() == []


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="needs /proc")
def test_registry_ignores_a_reused_pid(tmp_path):
    # the entry names a live PID, but that process started at another time: not the site
    path = tmp_path / f"{os.getppid()}.json"
    path.write_text(json.dumps({"pid": os.getppid(), "role": "worker", "threads": 1,
                                "cpus": None, "start": "1"}))
    assert SiteRegistry(tmp_path).peers() == []
    assert not path.exists()


def test_registry_skips_unreadable_entries(tmp_path):
    (tmp_path / "123.json").write_text("{half")
    assert SiteRegistry(tmp_path).peers() == []
