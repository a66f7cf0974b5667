"""How many torch threads a site runs, so that two sites on one machine do not oversubscribe it.

A worker and a controller on one machine each start as many torch threads as the machine has
cores; on a small box the two then take turns on every core and each pass runs far slower than
alone, silently.  Each ``wanspec worker`` / ``wanspec controller`` therefore registers itself in
a per-user directory (one file per process; files of dead processes are ignored and removed) and
splits the CPUs it may use with the live sites it finds there.  :func:`plan_threads` is the
decision, pure; :class:`SiteRegistry` is the bookkeeping.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs a cgroup v2 quota allows (``"quota period"``, rounded up), or None if unlimited or
    unknown: a container limited to 2 CPUs on a 64-core host must not start 64 threads."""
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpu_set() -> frozenset[int] | None:
    """The CPUs this process may run on (its affinity), where the platform says."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cpus(cpus: frozenset[int] | None = None, quota: int | None = None) -> int:
    """CPUs this process may actually use: its affinity (else the machine's count), capped by a
    cgroup quota."""
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    return max(1, min(count, quota) if quota is not None else count)


@dataclass(frozen=True)
class Peer:
    """Another wanspec site on this machine, as it registered itself."""

    pid: int
    role: str
    threads: int
    cpus: frozenset[int] | None = None

    def describe(self) -> str:
        return f"the wanspec {self.role} (pid {self.pid})"

    def shares(self, cpus: frozenset[int] | None) -> bool:
        """Whether it may run on our CPUs (unknown sets are assumed to overlap)."""
        return self.cpus is None or cpus is None or bool(self.cpus & cpus)


@dataclass(frozen=True)
class ThreadPlan:
    """The thread count to set (None: leave torch's choice) and the line to print, if any."""

    threads: int | None
    message: str | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(peers: Sequence[Peer]) -> str:
    return " and ".join(p.describe() for p in peers)


def plan_threads(*, role: str, available: int, default: int, explicit: int | None,
                 peers: Sequence[Peer]) -> ThreadPlan:
    """Decide this site's torch intra-op threads.

    ``available``: CPUs this process may use; ``default``: torch's own choice; ``explicit``:
    ``--threads`` if given (it always wins, with a warning if it oversubscribes the CPUs);
    ``peers``: the other live wanspec sites sharing these CPUs.  Without ``--threads`` the
    available CPUs are split evenly between this site and its peers (at least one thread each).
    """
    cpus = _plural(available, "CPU")
    if explicit is not None:
        others = sum(p.threads for p in peers)
        if peers and explicit + others > available:
            fair = max(1, available // (len(peers) + 1))
            return ThreadPlan(explicit, (
                f"warning: --threads {explicit} here plus {others} of {_names(peers)} exceed the "
                f"{cpus} available, so both sites slow down: give each --threads {fair} "
                "(or leave --threads out to split them)"))
        if explicit > available:
            return ThreadPlan(explicit, (
                f"warning: --threads {explicit} exceeds the {cpus} available to this process, "
                f"so passes slow down: use --threads {available} or fewer"))
        return ThreadPlan(explicit)
    share = max(1, available // (len(peers) + 1))
    threads = min(default, share)
    if peers:
        return ThreadPlan(threads, (
            f"wanspec {role}: {_plural(threads, 'torch thread')} of the {cpus} available, "
            f"sharing them with {_names(peers)} on this machine; --threads N overrides"))
    if threads != default:
        return ThreadPlan(threads)  # a quota or affinity torch did not see: nothing to tell
    return ThreadPlan(None)


def default_registry_dir() -> Path:
    """Per-user: ``$XDG_RUNTIME_DIR/wanspec/sites``, else a directory in the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "wanspec" / "sites"
    return Path(tempfile.gettempdir()) / f"wanspec-{getpass.getuser()}" / "sites"


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux), so that a PID reused by another process is not taken
    for the site that registered it; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after "pid (comm)"
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class SiteRegistry:
    """The live wanspec sites of this user on this machine: one JSON file per process."""

    def __init__(self, directory: Path | None = None, pid: int | None = None) -> None:
        self.directory = directory if directory is not None else default_registry_dir()
        self.pid = pid if pid is not None else os.getpid()
        self.path = self.directory / f"{self.pid}.json"

    def register(self, role: str, threads: int, cpus: frozenset[int] | None) -> None:
        """Write (or rewrite) this process's entry; atomic, so a reader never sees half of it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"pid": self.pid, "role": role, "threads": threads,
                  "cpus": sorted(cpus) if cpus is not None else None,
                  "start": _start_time(self.pid)}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def unregister(self) -> None:
        self.path.unlink(missing_ok=True)

    def peers(self) -> list[Peer]:
        """The other live sites, by PID; entries of dead (or reused) PIDs are removed."""
        found: list[Peer] = []
        try:
            entries = sorted(self.directory.glob("*.json"))
        except OSError:
            return found
        for entry in entries:
            try:
                record = json.loads(entry.read_text())
                pid = int(record["pid"])
                if pid == self.pid:
                    continue
                start = record.get("start")
                if not _alive(pid) or (start is not None and _start_time(pid) != start):
                    entry.unlink(missing_ok=True)
                    continue
                cpus = record.get("cpus")
                found.append(Peer(pid, str(record["role"]), int(record["threads"]),
                                  frozenset(cpus) if cpus is not None else None))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable or being written: not counted
        return found
