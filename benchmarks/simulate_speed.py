"""How fast ``wanspec simulate`` is: committed tokens simulated per second of wall time.

Not a test (timings depend on the machine and its load): run it by hand.

    .venv/bin/python benchmarks/simulate_speed.py                 # paper-like regime
    .venv/bin/python benchmarks/simulate_speed.py --json benchmarks/results/simulate_speed.json
    .venv/bin/python benchmarks/simulate_speed.py --no-sweep      # per mode only, quick

Four measurements:

1. per mode, one process: tokens/s and CPU time per committed token, split into time spent
   inside the cores (ControllerCore / WorkerCore / LocalDecoder methods, timed by wrapping them)
   and the simulator's own driver (event loop, link, synthetic models);
2. the full sweep ``rtt=0:150:10`` x 4 policies + baselines, with 1 and with 2 processes: wall
   time and committed tokens per second of wall time (all modes counted);
3. per-call cost of the core entry points (in the JSON's ``core_split``), the numbers behind any
   hot-spot report;
4. startup: importing everything ``wanspec simulate`` uses, in a fresh interpreter, and whether
   that imports torch (it must not: ~1 s per process).

"Tokens" are committed output tokens of every simulated request (baselines included).

The goal (issue 10): at least 30,000 committed tokens/s in pure Python on 2 cores for the sweep.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def _cpu() -> float:
    return time.process_time()


def per_mode(cfg: Any, modes: list[str], repeat: int) -> list[dict[str, Any]]:
    from wanspec.simulate.baselines import simulate_local
    from wanspec.simulate.engine import simulate_remote
    from wanspec.simulate.worlds import worlds

    reqs = worlds(cfg)
    out = []
    for mode in modes:
        run: Callable[[], Any] = (
            (lambda m=mode: simulate_local(cfg, m, reqs)) if mode in ("target", "sd", "sd-dynamic")
            else (lambda m=mode: simulate_remote(cfg, m, reqs)))
        run()  # warm-up
        best_wall, best_cpu = float("inf"), float("inf")
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), _cpu()
            res = run()
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, _cpu() - c0)
        tokens = sum(r.metrics.committed_tokens for r in res.requests)
        out.append({"mode": mode, "tokens": tokens, "wall_s": best_wall,
                    "tokens_per_s": tokens / best_wall, "cpu_us_per_token": 1e6 * best_cpu / tokens})
    return out


def core_split(cfg: Any, modes: list[str]) -> dict[str, dict[str, Any]]:
    """Time inside core entry points vs everything else, per committed token (wrapped calls)."""
    from wanspec.core.controller import ControllerCore
    from wanspec.core.local import LocalDecoder
    from wanspec.core.worker import WorkerCore
    from wanspec.simulate.baselines import simulate_local
    from wanspec.simulate.engine import simulate_remote
    from wanspec.simulate.worlds import worlds

    from wanspec.core.link import LinkCore

    targets = [(ControllerCore, ["on_message", "on_event", "on_timer", "start", "next_timer"]),
               (WorkerCore, ["on_draft_done", "on_message"]),
               (LinkCore, ["on_message", "on_timer", "next_timer"]),
               (LocalDecoder, ["on_event", "start"])]
    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    saved = []
    pc = time.perf_counter
    for cls, names in targets:
        for name in names:
            f = getattr(cls, name)
            saved.append((cls, name, f))
            key = f"{cls.__name__}.{name}"

            def wrapped(*a: Any, __f: Any = f, __k: str = key, **k: Any) -> Any:
                t = pc()
                try:
                    return __f(*a, **k)
                finally:
                    e = stats[__k]
                    e[0] += pc() - t
                    e[1] += 1

            setattr(cls, name, wrapped)
    reqs = worlds(cfg)
    result = {}
    try:
        for mode in modes:
            stats.clear()
            t0 = pc()
            res = (simulate_local(cfg, mode, reqs) if mode in ("target", "sd", "sd-dynamic")
                   else simulate_remote(cfg, mode, reqs))
            total = pc() - t0
            tokens = sum(r.metrics.committed_tokens for r in res.requests)
            core = sum(v[0] for v in stats.values())
            result[mode] = {
                "total_us_per_token": 1e6 * total / tokens,
                "core_us_per_token": 1e6 * core / tokens,
                "driver_us_per_token": 1e6 * (total - core) / tokens,
                "calls": {k: {"per_token": v[1] / tokens, "us_per_call": 1e6 * v[0] / v[1]}
                          for k, v in sorted(stats.items(), key=lambda kv: -kv[1][0]) if v[1]},
            }
    finally:
        for cls, name, f in saved:
            setattr(cls, name, f)
    return result


def sweep(cfg: Any, jobs: int, repeat: int) -> dict[str, Any]:
    """The full sweep, ``repeat`` times (a shared machine's speed drifts): best and median."""
    import statistics

    from wanspec.baselines import BASELINES, sd_gammas
    from wanspec.simulate.config import POLICIES
    from wanspec.simulate.sweep import parse_sweep, run_sweep
    from wanspec.simulate.worlds import _CACHE

    walls = []
    for _ in range(repeat):
        _CACHE.clear()
        w0 = time.perf_counter()
        recs = run_sweep(cfg, [parse_sweep("rtt=0:150:10")], POLICIES, jobs=jobs)
        walls.append(time.perf_counter() - w0)
    # each baseline runs once for the whole sweep (copied to every point): count it once, with
    # the standard-SD runs of every window of the best-SD search
    base = {r["mode"]: r["tokens"] for r in recs[: len(BASELINES)]}
    local_runs = base["target"] + base["sd-dynamic"] + base["sd"] * len(sd_gammas(cfg.gamma))
    tokens = sum(r["tokens"] for r in recs if r["mode"] in POLICIES) + local_runs
    assert all(r["identical_to_target_only"] for r in recs)
    best, median = min(walls), statistics.median(walls)
    return {"jobs": jobs, "points": len(recs) // (len(BASELINES) + len(POLICIES)),
            "tokens": tokens,
            "wall_s": best, "tokens_per_s": tokens / best, "median_wall_s": median,
            "median_tokens_per_s": tokens / median, "runs": len(walls)}


def startup() -> dict[str, Any]:
    """Import time of the simulator and its CLI in a fresh interpreter; torch must stay out."""
    import subprocess
    import sys

    code = ("import sys, time; t = time.perf_counter(); "
            "import wanspec.cli.app, wanspec.cli.simulate, wanspec.simulate.sweep, "
            "wanspec.simulate.report; "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")
    best = float("inf")
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        best = min(best, float(out[0]))
    return {"import_s": best, "imports_torch": out[1] == "True"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--draft-ms", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-sweep", action="store_true", help="skip the full-sweep measurement")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    from wanspec.simulate.config import POLICIES, SimConfig

    cfg = SimConfig(alpha=args.alpha, rtt_ms=args.rtt_ms, target_ms=args.target_ms,
                    draft_ms=args.draft_ms, requests=args.requests, max_tokens=args.max_tokens)
    modes = ["target", "sd", "sd-dynamic", *POLICIES]
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1min": os.getloadavg()[0], "processor": platform.processor()},
        "config": cfg.describe() + f", rtt {cfg.rtt_ms:g} ms",
        "per_mode": per_mode(cfg, modes, args.repeat),
        "startup": startup(),
        "core_split": core_split(cfg, modes),
    }
    if not args.no_sweep:
        report["sweep"] = [sweep(cfg, 1, args.repeat), sweep(cfg, 2, args.repeat)]

    print(f"config: {report['config']}  "
          f"(load average {report['machine']['load_avg_1min']:.2f})")
    print(f"{'mode':10s} {'tok/s':>9s} {'cpu us/tok':>10s} {'core us':>8s} {'driver us':>9s}")
    for m in report["per_mode"]:
        s = report.get("core_split", {}).get(m["mode"])
        split = f"{s['core_us_per_token']:8.1f} {s['driver_us_per_token']:9.1f}" if s else ""
        print(f"{m['mode']:10s} {m['tokens_per_s']:9.0f} {m['cpu_us_per_token']:10.1f} {split}")
    st = report["startup"]
    print(f"startup: imports in {st['import_s']:.2f} s, torch imported: {st['imports_torch']}")
    for s in report.get("sweep", []):
        print(f"sweep rtt=0:150:10, {s['points']} points, jobs={s['jobs']}: {s['tokens']} tokens "
              f"in {s['wall_s']:.2f} s = {s['tokens_per_s']:.0f} tokens/s (best of {s['runs']}; "
              f"median {s['median_tokens_per_s']:.0f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
