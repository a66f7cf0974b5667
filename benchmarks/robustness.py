"""The robustness matrix: does wanspec's advantage hold outside the setting it was built in?

Two grids, each cell comparing the ``adaptive`` policy (default ``--max-slowdown``) with the
strongest baselines measured in the same run on the same requests (:mod:`wanspec.baselines`:
best SD = standard SD at its fastest window of 1..10, dynamic SD, target-only):

* **emulate** on the shipped pair: decoding {greedy, T=0.8 top-p 0.95 seed 7} x prompts
  {held-out Shakespeare, out-of-domain prose and code} x device costs {30/4, 60/2, 15/5 ms
  target/draft, 0.5 ms per extra verified token} x link {clean, 5 ms jitter} x RTT
  {10, 20, 30, 50, 100 ms}: 120 cells of 8 prompts x 48 tokens.  Baselines do not depend on the
  link or the RTT: they run once per (decoding, prompts, costs) setting.
* **simulate**: acceptance alpha {0.3 .. 0.95} x the same costs x RTT up to 300 ms, 16 requests
  x 128 tokens of synthetic i.i.d. acceptance.

Per cell: latency (mean TPOT) / best SD, busy-site draft passes / best SD, speed vs target-only,
and whether every output equals target-only decoding.  The bars (issue 10): P1 at RTT <= 30 ms,
in the default cell (greedy, held-out, 30/4, clean) and in >= 80% of all cells: latency <=
1.05x best SD with busy-site draft passes <= 0.35x best SD; P3 in every cell, emulated and
simulated: never slower than target-only; every output identical.

    python benchmarks/robustness.py --json benchmarks/results/robustness.json \\
        --plot docs/img/robustness_emulate.png --sim-plot docs/img/robustness_simulate.png
    python benchmarks/robustness.py --report benchmarks/results/robustness.json   # tables again
    python benchmarks/robustness.py --quick    # a small subset, for a CI-sized check

Not a test: emulated timing is deterministic, but it takes ~15 minutes of CPU (2 processes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DECODINGS = {"greedy": (0.0, 1.0, 0), "sampled": (0.8, 0.95, 7)}  # temperature, top-p, seed
PROMPT_SETS = ("heldout", "ood")
COSTS = ((30.0, 4.0), (60.0, 2.0), (15.0, 5.0))  # target ms, draft ms
VERIFY_PER_TOKEN_MS = 0.5
LINKS = {"clean": 0.0, "jitter5": 5.0}  # one-way jitter, ms
RTTS = (10.0, 20.0, 30.0, 50.0, 100.0)
SIM_ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SIM_RTTS = (10.0, 20.0, 30.0, 50.0, 100.0, 150.0, 200.0, 300.0)
DEFAULT_CELL = {"decoding": "greedy", "prompts": "heldout", "costs": "30/4", "link": "clean"}
P1_LATENCY, P1_BUSY, P1_RTT, P1_SHARE = 1.05, 0.35, 30.0, 0.80
# the draft-tree issue (14): at RTT 100 ms, the default cell within 1.05x best SD's latency with
# <= 0.5x its busy-site draft passes (<= 0.35x at 50 ms), and >= 80% of the cells within 1.10x
T_LATENCY, T_BUSY_100, T_BUSY_50, T_SHARE_LATENCY = 1.05, 0.50, 0.35, 1.10


@dataclass(frozen=True)
class Setting:
    """What the baselines depend on: decoding, prompts, device costs."""

    decoding: str
    prompts: str
    target_ms: float
    draft_ms: float

    @property
    def costs(self) -> str:
        return f"{self.target_ms:g}/{self.draft_ms:g}"


# ---- emulate ------------------------------------------------------------------------------------
_MODELS: Any = None  # (target, draft), loaded once per process


def _models() -> Any:
    global _MODELS
    if _MODELS is None:
        from wanspec.cli.loading import load_models

        _MODELS = load_models(None, None, need_draft=True)
    return _MODELS


def _prompts(name: str, n: int) -> list[str]:
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts

    path = DEFAULT_PROMPTS if name == "heldout" else DEFAULT_PROMPTS.with_name("out_of_domain.jsonl")
    return load_prompts(path, n)


def run_setting(task: tuple[Setting, tuple[str, ...], tuple[float, ...], int, int]) -> list[dict]:
    """Baselines once, then ``adaptive`` at every (link, RTT) of one setting: its cells."""
    setting, links, rtts, n_prompts, max_tokens = task
    import torch

    from wanspec.emulate.runner import Emulation, EmulationConfig
    from wanspec.runtime.engine import TimingConfig
    from wanspec.sampling import SamplingParams

    torch.set_num_threads(1)  # one process per core
    target, draft = _models()
    temperature, top_p, seed = DECODINGS[setting.decoding]
    cfg = EmulationConfig(
        timing=TimingConfig.emulate(setting.target_ms, setting.draft_ms, VERIFY_PER_TOKEN_MS),
        max_tokens=max_tokens, sampling=SamplingParams(temperature=temperature, top_p=top_p,
                                                       seed=seed))
    emu = Emulation(target, draft, cfg)
    t0 = time.perf_counter()
    bases = emu.baselines(_prompts(setting.prompts, n_prompts))
    cells = []
    for link, rtt in itertools.product(links, rtts):
        rec = emu.remote("adaptive", rtt, bases, jitter_ms=LINKS[link])
        cells.append(_cell(setting, link, rtt, rec, bases))
    print(f"  {setting.decoding:7s} {setting.prompts:7s} {setting.costs:5s}: "
          f"{len(cells)} cells in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return cells


def _cell(setting: Setting, link: str, rtt: float, rec: dict, bases: dict) -> dict[str, Any]:
    best, target = bases["sd-best"], bases["target"]
    identical = rec["identical_to_target_only"] and all(
        b["identical_to_target_only"] for b in bases.values())
    return {
        "decoding": setting.decoding, "prompts": setting.prompts, "costs": setting.costs,
        "link": link, "rtt_ms": rtt,
        "latency_vs_best_sd": rec["latency_vs_best_sd"],
        "busy_vs_best_sd": rec["busy_site_draft_passes_vs_best_sd"],
        "speedup_vs_target": rec["speedup_vs_target"],
        "latency_vs_dynamic_sd": rec["tpot_ms_mean"] / bases["sd-dynamic"]["tpot_ms_mean"],
        "tpot_ms": rec["tpot_ms_mean"], "best_sd_tpot_ms": best["tpot_ms_mean"],
        "best_sd_gamma": best["sd_gamma"], "target_tpot_ms": target["tpot_ms_mean"],
        "dynamic_sd_tpot_ms": bases["sd-dynamic"]["tpot_ms_mean"],
        "sd_gamma4_tpot_ms": bases["sd"]["tpot_ms_mean"],
        "busy_per_token": rec["busy_site_draft_passes_per_token"],
        "best_sd_busy_per_token": best["busy_site_draft_passes_per_token"],
        "stall_ms_per_token": rec["stall_ms_per_token"],
        "acceptance_per_token": best["acceptance_rate"],
        "tokens": rec["tokens"], "identical": identical,
    }


def emulate_grid(quick: bool, jobs: int) -> list[dict[str, Any]]:
    if quick:
        settings = [Setting("greedy", "heldout", 30.0, 4.0)]
        links, rtts, n_prompts, max_tokens = ("clean",), (10.0, 30.0), 2, 16
    else:
        settings = [Setting(d, p, t, dr) for d in DECODINGS for p in PROMPT_SETS
                    for t, dr in COSTS]
        links, rtts, n_prompts, max_tokens = tuple(LINKS), RTTS, 8, 48
    tasks = [(s, links, rtts, n_prompts, max_tokens) for s in settings]
    if jobs <= 1 or len(tasks) == 1:
        return [c for t in tasks for c in run_setting(t)]
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return [c for cells in pool.map(run_setting, tasks) for c in cells]


# ---- simulate -----------------------------------------------------------------------------------
def simulate_grid(quick: bool, jobs: int) -> list[dict[str, Any]]:
    from wanspec.simulate.config import SimConfig
    from wanspec.simulate.sweep import Sweep, resolve, run_sweep

    alphas, rtts, costs = SIM_ALPHAS, SIM_RTTS, COSTS
    requests, max_tokens = 16, 128
    if quick:
        alphas, rtts, costs, requests, max_tokens = (0.5, 0.9), (10.0, 100.0), COSTS[:1], 4, 32
    cells = []
    for target_ms, draft_ms in costs:
        base = SimConfig(target_ms=target_ms, draft_ms=draft_ms,
                         verify_per_token_ms=VERIFY_PER_TOKEN_MS, requests=requests,
                         max_tokens=max_tokens)
        sweeps = [Sweep(resolve("alpha"), alphas), Sweep(resolve("rtt"), rtts)]
        recs = run_sweep(base, sweeps, ["adaptive"], jobs=jobs)
        by = {(r["alpha"], r["rtt_ms"], r["mode"]): r for r in recs}
        for alpha, rtt in itertools.product(alphas, rtts):
            rec = by[(alpha, rtt, "adaptive")]
            bases = {m: by[(alpha, rtt, m)] for m in ("target", "sd", "sd-best", "sd-dynamic")}
            setting = Setting("greedy", f"alpha={alpha:g}", target_ms, draft_ms)
            cell = _cell(setting, "clean", rtt, rec, bases)
            cell["alpha"] = alpha
            cells.append(cell)
    return cells


# ---- verdicts, tables, plots --------------------------------------------------------------------
def p1_ok(c: dict[str, Any]) -> bool:
    return c["latency_vs_best_sd"] <= P1_LATENCY and c["busy_vs_best_sd"] <= P1_BUSY


def verdicts(emulated: list[dict], simulated: list[dict]) -> dict[str, Any]:
    low = [c for c in emulated if c["rtt_ms"] <= P1_RTT]
    default = [c for c in low if all(c[k] == v for k, v in DEFAULT_CELL.items())]
    everything = emulated + simulated
    return {
        "p1_default_cells": [(c["rtt_ms"], p1_ok(c)) for c in default],
        "p1_default_met": bool(default) and all(p1_ok(c) for c in default),
        "p1_share": sum(map(p1_ok, low)) / len(low) if low else None,
        "p1_latency_share": sum(c["latency_vs_best_sd"] <= P1_LATENCY for c in low) / len(low)
        if low else None,
        "p1_busy_share": sum(c["busy_vs_best_sd"] <= P1_BUSY for c in low) / len(low)
        if low else None,
        "p1_met": bool(low) and sum(map(p1_ok, low)) >= P1_SHARE * len(low),
        "p3_slower_than_target": [_name(c) for c in everything if c["speedup_vs_target"] < 1.0],
        "p3_met": all(c["speedup_vs_target"] >= 1.0 for c in everything),
        "identical": all(c["identical"] for c in everything),
        "cells": {"emulated": len(emulated), "simulated": len(simulated)},
        **tree_verdicts(emulated),
    }


def tree_verdicts(emulated: list[dict]) -> dict[str, Any]:
    """The bars of the draft-tree issue at long round trips."""
    def default_at(rtt: float) -> dict | None:
        return next((c for c in emulated if c["rtt_ms"] == rtt
                     and all(c[k] == v for k, v in DEFAULT_CELL.items())), None)

    out: dict[str, Any] = {}
    at100, at50 = default_at(100.0), default_at(50.0)
    if at100 is not None:
        out["t_default_100"] = (at100["latency_vs_best_sd"], at100["busy_vs_best_sd"])
        out["t_default_100_met"] = (at100["latency_vs_best_sd"] <= T_LATENCY
                                    and at100["busy_vs_best_sd"] <= T_BUSY_100)
    if at50 is not None:
        out["t_default_50"] = (at50["latency_vs_best_sd"], at50["busy_vs_best_sd"])
        out["t_default_50_met"] = (at50["latency_vs_best_sd"] <= T_LATENCY
                                   and at50["busy_vs_best_sd"] <= T_BUSY_50)
    cells100 = [c for c in emulated if c["rtt_ms"] == 100.0]
    if cells100:
        share = sum(c["latency_vs_best_sd"] <= T_SHARE_LATENCY for c in cells100) / len(cells100)
        out["t_share_100"] = share
        out["t_share_100_met"] = share >= P1_SHARE
    return out


def _name(c: dict[str, Any]) -> str:
    return f"{c['decoding']}/{c['prompts']}/{c['costs']}/{c['link']}/rtt {c['rtt_ms']:g}"


def markdown(emulated: list[dict], simulated: list[dict]) -> str:
    """The tables of docs/results.md: one row per setting, 'latency / busy' per RTT."""
    lines = []
    rtts = sorted({c["rtt_ms"] for c in emulated})
    lines.append("| decoding | prompts | costs | link | best SD (g) | "
                 + " | ".join(f"RTT {r:g}" for r in rtts) + " |")
    lines.append("|" + "---|" * (5 + len(rtts)))
    rows: dict[tuple, dict[float, dict]] = {}
    for c in emulated:
        rows.setdefault((c["decoding"], c["prompts"], c["costs"], c["link"]), {})[c["rtt_ms"]] = c
    for key, by_rtt in rows.items():
        first = next(iter(by_rtt.values()))
        cells = []
        for r in rtts:
            c = by_rtt[r]
            mark = "" if c["rtt_ms"] > P1_RTT or p1_ok(c) else " ✗"
            mark += "" if c["speedup_vs_target"] >= 1.0 else " (slower than target)"
            cells.append(f"{c['latency_vs_best_sd']:.3f} / {c['busy_vs_best_sd']:.2f}{mark}")
        lines.append(f"| {' | '.join(key)} | {first['best_sd_tpot_ms']:.2f} ms "
                     f"({first['best_sd_gamma']}) | " + " | ".join(cells) + " |")
    if simulated:
        lines.append("")
        srtts = sorted({c["rtt_ms"] for c in simulated})
        lines.append("| alpha | costs | " + " | ".join(f"RTT {r:g}" for r in srtts) + " |")
        lines.append("|" + "---|" * (2 + len(srtts)))
        srows: dict[tuple, dict[float, dict]] = {}
        for c in simulated:
            srows.setdefault((f"{c['alpha']:g}", c["costs"]), {})[c["rtt_ms"]] = c
        for key, by_rtt in srows.items():
            cells = [f"{by_rtt[r]['latency_vs_best_sd']:.3f} / {by_rtt[r]['busy_vs_best_sd']:.2f}"
                     + ("" if by_rtt[r]["speedup_vs_target"] >= 1.0 else " (slower than target)")
                     for r in srtts]
            lines.append(f"| {' | '.join(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(cells: list[dict], path: Path, row_keys: tuple[str, ...], title: str) -> None:
    """Latency / best SD, busy-site passes / best SD and speed vs target-only per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(dict.fromkeys(tuple(str(c[k]) for k in row_keys) for c in cells))
    rtts = sorted({c["rtt_ms"] for c in cells})
    by = {(tuple(str(c[k]) for k in row_keys), c["rtt_ms"]): c for c in cells}
    panels = [("latency_vs_best_sd", "latency / best SD", (0.8, 1.2), "RdYlGn_r", P1_LATENCY),
              ("busy_vs_best_sd", "busy-site draft passes / best SD", (0.0, 1.2), "RdYlGn_r",
               P1_BUSY),
              ("speedup_vs_target", "speed vs target-only", (0.8, 1.2), "RdYlGn", 1.0)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.32 * len(rows) + 2.2))
    for ax, (key, label, (lo, hi), cmap, bar) in zip(axes, panels):
        grid = np.array([[by[(r, t)][key] for t in rtts] for r in rows])
        ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        for i, j in itertools.product(range(len(rows)), range(len(rtts))):
            v = grid[i, j]
            bad = v > bar if key != "speedup_vs_target" else v < bar
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if bad else "normal")
        ax.set_xticks(range(len(rtts)), [f"{t:g}" for t in rtts])
        ax.set_xlabel("RTT (ms)")
        ax.set_title(f"{label} (bar {bar:g}; bold: misses)", fontsize=9)
        ax.set_yticks(range(len(rows)), [" / ".join(r) for r in rows] if ax is axes[0] else [])
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> None:
    v = result["verdicts"]
    print(markdown(result["emulated"], result["simulated"]))
    print()
    default = ", ".join(f"RTT {rtt:g} {'met' if ok else 'missed'}" for rtt, ok in v["p1_default_cells"])
    print(f"P1 default cell (RTT <= 30): {default} -> "
          f"{'met' if v['p1_default_met'] else 'MISSED'}")
    if v["p1_share"] is not None:
        print(f"P1 all cells at RTT <= 30: {100 * v['p1_share']:.0f}% meet both (latency alone "
              f"{100 * v['p1_latency_share']:.0f}%, busy alone {100 * v['p1_busy_share']:.0f}%) "
              f"-> {'met' if v['p1_met'] else 'MISSED'} (bar {100 * P1_SHARE:.0f}%)")
    print(f"P3 never slower than target-only: {'met' if v['p3_met'] else 'MISSED'} "
          f"{v['p3_slower_than_target'] or ''}")
    print(f"every output identical to target-only: {v['identical']}")
    if "t_default_100" in v:
        lat, busy = v["t_default_100"]
        print(f"trees, default cell at RTT 100: {lat:.3f} / {busy:.2f} -> "
              f"{'met' if v['t_default_100_met'] else 'MISSED'} (bars {T_LATENCY} / {T_BUSY_100})")
    if "t_default_50" in v:
        lat, busy = v["t_default_50"]
        print(f"trees, default cell at RTT 50: {lat:.3f} / {busy:.2f} -> "
              f"{'met' if v['t_default_50_met'] else 'MISSED'} (bars {T_LATENCY} / {T_BUSY_50})")
    if "t_share_100" in v:
        print(f"trees, cells at RTT 100 within {T_SHARE_LATENCY}x best SD: "
              f"{100 * v['t_share_100']:.0f}% -> {'met' if v['t_share_100_met'] else 'MISSED'} "
              f"(bar {100 * P1_SHARE:.0f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small subset (CI-sized)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", type=Path, help="write every cell and the verdicts here")
    ap.add_argument("--plot", type=Path, help="heat-map of the emulated matrix (PNG)")
    ap.add_argument("--sim-plot", type=Path, help="heat-map of the simulated grid (PNG)")
    ap.add_argument("--report", type=Path,
                    help="tables and verdicts (and --plot/--sim-plot) of a saved --json")
    ap.add_argument("--no-emulate", action="store_true", help="the simulated grid only")
    args = ap.parse_args()
    if args.report:  # tables, verdicts (and plots, if asked) of a saved run
        result = json.loads(args.report.read_text())
        emulated, simulated = result["emulated"], result["simulated"]
    else:
        t0 = time.perf_counter()
        emulated = [] if args.no_emulate else emulate_grid(args.quick, args.jobs)
        simulated = simulate_grid(args.quick, args.jobs)
        result = {"emulated": emulated, "simulated": simulated,
                  "verdicts": verdicts(emulated, simulated),
                  "wall_s": time.perf_counter() - t0, "quick": args.quick}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot and emulated:
        heatmap(emulated, args.plot, ("decoding", "prompts", "costs", "link"),
                "adaptive (max slowdown 1.05) vs the baselines, emulated on the shipped pair, "
                "8 prompts x 48 tokens per cell")
    if args.sim_plot and simulated:
        heatmap(simulated, args.sim_plot, ("alpha", "costs"),
                "adaptive (max slowdown 1.05) vs the baselines, simulated (i.i.d. acceptance "
                "alpha), 16 requests x 128 tokens per cell")
    report(result)


if __name__ == "__main__":
    main()
