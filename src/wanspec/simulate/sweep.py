"""Sweeps: ``name=start:stop:step`` or ``name=v1,v2,...``, their grid, and running it.

Why tasks of one (point, mode) each: they are independent and deterministic (every random stream
is keyed by the point's parameters), so they can run in any order, in parallel processes, and
give the same records.  Baselines do not depend on the link or the policy parameters, so they
run once per distinct model/cost setting and are copied to every point that shares it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from wanspec.errors import WanspecError
from wanspec.simulate.baselines import simulate_local
from wanspec.simulate.config import Param, SimConfig, check_value, resolve
from wanspec.simulate.engine import simulate_remote
from wanspec.baselines import BASELINES, best_sd, sd_gammas, with_ratios
from wanspec.simulate.records import aggregate, point_columns
from wanspec.simulate.trace import Trace
from wanspec.simulate.worlds import worlds

MAX_VALUES = 10_000
MAX_POINTS = 20_000


@dataclass(frozen=True)
class Sweep:
    param: Param
    values: tuple[Any, ...]


def _number(text: str, p: Param, spec: str) -> float:
    """One value of a sweep, in ``p``'s unit: durations and bandwidths in the grammar of
    :mod:`wanspec.units` (as the flags take them), other parameters as plain numbers."""
    what = f"--sweep {spec!r}:"
    if p.read is not None:
        try:
            return p.read(text.strip(), p.name)
        except WanspecError as exc:
            raise WanspecError(f"invalid {what} {exc}") from None
    t = text.strip().lower()
    if p.unit and t.endswith(p.unit.lower()):
        t = t[: -len(p.unit)].strip()
    try:
        x = float(t)
    except ValueError:
        raise WanspecError(f"invalid {what} {text.strip()!r} is not a number") from None
    if not math.isfinite(x):
        raise WanspecError(f"invalid {what} {text.strip()!r} is not a finite number")
    return x


def _range(a: float, b: float, step: float, spec: str) -> list[float]:
    if step <= 0:
        raise WanspecError(f"invalid --sweep {spec!r}: the step must be > 0")
    if b < a:
        raise WanspecError(f"invalid --sweep {spec!r}: stop is below start")
    n = math.floor((b - a) / step * (1 + 1e-12) + 1e-9) + 1  # stop included when it lands on it
    if n > MAX_VALUES:
        raise WanspecError(f"invalid --sweep {spec!r}: {n} values, at most {MAX_VALUES}")
    return [round(a + i * step, 10) for i in range(n)]


def parse_sweep(spec: str) -> Sweep:
    """``rtt=0:150:10`` (start:stop:step, stop included if it lands on it) or ``alpha=0.6,0.8``.

    Without ``NAME=`` the values are RTTs (``--sweep 0,10,20`` as for ``wanspec emulate``).
    """
    name, sep, rest = spec.partition("=")
    if not sep:
        name, sep, rest = "rtt", "=", spec
    if not name.strip() or not rest.strip():
        raise WanspecError(f"invalid --sweep {spec!r}: use NAME=START:STOP:STEP or NAME=V1,V2,...")
    p = resolve(name)
    if ":" in rest:
        parts = rest.split(":")
        if len(parts) != 3:
            raise WanspecError(f"invalid --sweep {spec!r}: a range is START:STOP:STEP")
        a, b, step = (_number(x, p, spec) for x in parts)
        raw = _range(a, b, step, spec)
    else:
        items = [x for x in rest.split(",")]
        if any(not x.strip() for x in items):
            raise WanspecError(f"invalid --sweep {spec!r}: empty value in the list")
        raw = [_number(x, p, spec) for x in items]
    values: list[Any] = []
    for x in raw:
        try:
            check_value(p, x)
        except WanspecError as exc:
            raise WanspecError(f"invalid --sweep {spec!r}: {exc}") from None
        v = int(round(x)) if p.kind is int else x
        if v not in values:
            values.append(v)
    return Sweep(p, tuple(values))


def grid(base: SimConfig, sweeps: Sequence[Sweep]) -> list[SimConfig]:
    """Every combination, the first sweep varying slowest; ``[base]`` without sweeps."""
    seen = set()
    for s in sweeps:
        if s.param.name in seen:
            raise WanspecError(f"--sweep {s.param.name} given twice")
        seen.add(s.param.name)
    total = math.prod(len(s.values) for s in sweeps) if sweeps else 1
    if total > MAX_POINTS:
        raise WanspecError(f"the sweep has {total} points, at most {MAX_POINTS}")
    points = []
    for combo in itertools.product(*(s.values for s in sweeps)):
        points.append(base.with_values({s.param.name: v for s, v in zip(sweeps, combo)}))
    return points


# ---- running -------------------------------------------------------------------------------
_TRACE: Trace | None = None  # the sweep's trace, in this process (never pickled per task)


def _set_trace(trace: Trace | None) -> None:
    global _TRACE
    _TRACE = trace


def _init_process(trace: Trace | None) -> None:
    """A pool process: the parent's trace (set here where the process is not forked)."""
    _set_trace(trace)


def _baseline_key(cfg: SimConfig) -> SimConfig:
    """The point with everything baselines ignore reset: equal keys share one baseline run."""
    return dataclasses.replace(cfg, rtt_ms=0.0, jitter_ms=0.0, bandwidth_mbit=0.0, loss=0.0,
                               spike_ms=None, up_share=0.5, lookahead=0,
                               entropy_threshold=1.0, max_slowdown=1.0, branches=0)


Task = tuple[SimConfig, str, int]  # (point, mode, window of a standard SD baseline)


def run_task(task: Task) -> dict[str, Any]:
    cfg, mode, gamma = task
    reqs = worlds(cfg, _TRACE)
    if mode in ("target", "sd", "sd-dynamic"):
        return aggregate(simulate_local(cfg, mode, reqs, gamma), cfg)
    return aggregate(simulate_remote(cfg, mode, reqs), cfg)


def _baseline_tasks(key: SimConfig) -> list[Task]:
    return [(key, "target", key.gamma), *((key, "sd", g) for g in sd_gammas(key.gamma)),
            (key, "sd-dynamic", key.gamma)]


def default_jobs(n_tasks: int, tokens: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return 1 if tokens < 60_000 or cpus < 2 else max(1, min(cpus, n_tasks))


def _execute(tasks: list[Task], jobs: int,
             trace: Trace | None) -> Iterator[dict[str, Any]]:
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(run_task, tasks)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else None)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_process,
                             initargs=(trace,)) as pool:
        yield from pool.map(run_task, tasks, chunksize=max(1, len(tasks) // (8 * jobs)))


def run_sweep(base: SimConfig, sweeps: Sequence[Sweep], policies: Sequence[str], *,
              trace: Trace | None = None, jobs: int = 0,
              progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One record per (point, mode): the baselines (:data:`~wanspec.baselines.BASELINES`), then
    each policy."""
    points = grid(base, sweeps)
    keys = list(dict.fromkeys(_baseline_key(p) for p in points))
    base_tasks = [t for k in keys for t in _baseline_tasks(k)]
    tasks = base_tasks + [(p, pol, p.gamma) for p in points for pol in policies]
    if jobs <= 0:
        jobs = default_jobs(len(tasks), len(tasks) * base.requests * base.max_tokens)
    _set_trace(trace)
    try:
        out: list[dict[str, Any]] = []
        for i, rec in enumerate(_execute(tasks, jobs, trace), 1):
            out.append(rec)
            if progress is not None:
                progress(i, len(tasks))
    finally:
        _set_trace(None)
    baselines: dict[SimConfig, dict[str, dict[str, Any]]] = {}
    sd_runs: dict[SimConfig, dict[int, dict[str, Any]]] = {}
    for (key, mode, gamma), rec in zip(base_tasks, out):
        if mode == "sd":
            sd_runs.setdefault(key, {})[gamma] = rec
        else:
            baselines.setdefault(key, {})[mode] = rec
    for key, runs in sd_runs.items():
        baselines[key]["sd"] = {**runs[key.gamma], "sd_gamma": key.gamma}
        baselines[key]["sd-best"] = best_sd(runs)
    remote = iter(out[len(base_tasks):])
    records: list[dict[str, Any]] = []
    for p in points:
        cols = point_columns(p)
        base_recs = {m: {**rec, **cols} for m, rec in baselines[_baseline_key(p)].items()}
        row = [base_recs[m] for m in BASELINES] + [next(remote) for _ in policies]
        t, sd, best = base_recs["target"], base_recs["sd"], base_recs["sd-best"]
        records.extend(with_ratios(r, t, sd, best) for r in row)
    return records


def swept_names(sweeps: Sequence[Sweep]) -> list[str]:
    return [s.param.field for s in sweeps]
