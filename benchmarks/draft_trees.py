"""Draft trees at long round trips: what branches from the worker's runner-ups buy (issue 14).

Two parts, each comparing ``adaptive`` with the strongest baselines measured in the same run on
the same requests (best SD = standard SD at its fastest window of 1..10):

* **emulate**, shipped pair, the robustness matrix's default cell (greedy, the first 8 held-out
  prompts x 48 tokens, 30/4 ms target/draft + 0.5 ms per extra verified token, clean link):
  RTT {30, 50, 100, 150} ms x tree budget ``--branches`` {0 (one chain), 4, 16 (the default)}.
  Per cell: latency / best SD, busy-site draft passes / best SD, branch hits and worker ->
  controller bytes per committed token, that traffic as a bit rate at the cell's own speed, and
  whether every output equals target-only decoding.
* **simulate** (synthetic draft with the shipped pair's measured top-k structure, i.i.d.
  acceptance alpha 0.8, 16 requests x 128 tokens, the same costs): RTT 0..300 ms with and
  without trees, plotted beside the ~70 ms where the WANSpec paper's advantage ends.

    python benchmarks/draft_trees.py --json benchmarks/results/draft_trees.json \\
        --plot docs/img/draft_trees_simulate.png
    python benchmarks/draft_trees.py --report benchmarks/results/draft_trees.json
    python benchmarks/draft_trees.py --quick      # a small subset, for a CI-sized check

Not a test: emulated timing is deterministic, but the emulate part runs the real models
(about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

RTTS = (30.0, 50.0, 100.0, 150.0)
BRANCHES = (0, 4, 16)
SIM_RTTS = (0.0, 10.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 250.0, 300.0)
SIM_BRANCHES = (0, 16)
SIM_ALPHA = 0.8
PAPER_LIMIT_MS = 70.0  # WANSpec (arXiv 2602.18931): the advantage degrades past ~70 ms
LINK_BPS = 10e6  # the bar: the worker's stream must fit a 10 Mbit/s link


def emulate_part(quick: bool) -> list[dict[str, Any]]:
    import torch

    from wanspec.cli.loading import load_models
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts
    from wanspec.emulate.runner import Emulation, EmulationConfig
    from wanspec.runtime.engine import TimingConfig

    torch.set_num_threads(1)
    target, draft = load_models(None, None, need_draft=True)
    n_prompts, max_tokens, rtts = (2, 16, (50.0, 100.0)) if quick else (8, 48, RTTS)
    cfg = EmulationConfig(timing=TimingConfig.emulate(30.0, 4.0, 0.5), max_tokens=max_tokens)
    emu = Emulation(target, draft, cfg)
    t0 = time.perf_counter()
    bases = emu.baselines(load_prompts(DEFAULT_PROMPTS, n_prompts))
    cells = []
    for rtt in rtts:
        for branches in BRANCHES:
            emu.config = dataclasses.replace(cfg, branches=branches)
            rec = emu.remote("adaptive", rtt, bases)
            cells.append(_cell("emulate", rtt, branches, rec, bases))
            print(f"  emulate RTT {rtt:g} ms, branches {branches}: "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return cells


def simulate_part(quick: bool) -> list[dict[str, Any]]:
    from wanspec.simulate.config import SimConfig
    from wanspec.simulate.sweep import Sweep, resolve, run_sweep

    requests, max_tokens, rtts = (4, 32, (0.0, 100.0)) if quick else (16, 128, SIM_RTTS)
    base = SimConfig(target_ms=30.0, draft_ms=4.0, verify_per_token_ms=0.5, alpha=SIM_ALPHA,
                     requests=requests, max_tokens=max_tokens)
    recs = run_sweep(base, [Sweep(resolve("branches"), SIM_BRANCHES), Sweep(resolve("rtt"), rtts)],
                     ["adaptive"], jobs=2)
    by = {(r["branches"], r["rtt_ms"], r["mode"]): r for r in recs}
    cells = []
    for branches in SIM_BRANCHES:
        for rtt in rtts:
            rec = by[(branches, rtt, "adaptive")]
            bases = {m: by[(branches, rtt, m)] for m in ("target", "sd", "sd-best")}
            cells.append(_cell("simulate", rtt, branches, rec, bases))
    return cells


def _cell(kind: str, rtt: float, branches: int, rec: dict, bases: dict) -> dict[str, Any]:
    identical = rec["identical_to_target_only"] and all(
        b["identical_to_target_only"] for b in bases.values())
    tpot_s = rec["tpot_ms_mean"] / 1000
    per_token = rec.get("worker_bytes_per_token")
    return {
        "kind": kind, "rtt_ms": rtt, "branches": branches,
        "latency_vs_best_sd": rec["latency_vs_best_sd"],
        "busy_vs_best_sd": rec["busy_site_draft_passes_vs_best_sd"],
        "speedup_vs_target": rec["speedup_vs_target"],
        "tpot_ms": rec["tpot_ms_mean"], "best_sd_tpot_ms": bases["sd-best"]["tpot_ms_mean"],
        "best_sd_gamma": bases["sd-best"]["sd_gamma"],
        "branch_hits_per_token": rec.get("branch_hits_per_token"),
        "worker_bytes_per_token": per_token,
        # the worker's stream at this cell's own pace (one request at a time)
        "worker_mbit_s": per_token * 8 / tpot_s / 1e6 if per_token is not None else None,
        "stall_ms_per_token": rec["stall_ms_per_token"],
        "identical": identical,
    }


def verdicts(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The bars of issue 14 that this benchmark measures (the matrix share is robustness.py's)."""
    emu = {(c["rtt_ms"], c["branches"]): c for c in cells if c["kind"] == "emulate"}
    default = max(BRANCHES)
    at100, at50 = emu.get((100.0, default)), emu.get((50.0, default))
    out: dict[str, Any] = {}
    if at100 is not None:
        out["rtt100_default_cell"] = (at100["latency_vs_best_sd"], at100["busy_vs_best_sd"])
        out["rtt100_met"] = at100["latency_vs_best_sd"] <= 1.05 and at100["busy_vs_best_sd"] <= 0.5
        out["rtt100_mbit_s"] = at100["worker_mbit_s"]
        out["fits_10_mbit"] = at100["worker_mbit_s"] is not None and \
            at100["worker_mbit_s"] * 1e6 <= LINK_BPS
    if at50 is not None:
        out["rtt50_busy"] = at50["busy_vs_best_sd"]
        out["rtt50_met"] = at50["busy_vs_best_sd"] <= 0.35
    out["all_identical"] = all(c["identical"] for c in cells)
    return out


def report(cells: list[dict[str, Any]]) -> None:
    for kind in ("emulate", "simulate"):
        rows = [c for c in cells if c["kind"] == kind]
        if not rows:
            continue
        print(f"\n{kind}: adaptive vs best SD (latency / busy-site draft passes)")
        print("| RTT | branches | TPOT (ms) | best SD | latency / best SD | passes / best SD | "
              "branch hits / token | worker bytes / token | worker Mbit/s | identical |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in sorted(rows, key=lambda c: (c["rtt_ms"], c["branches"])):
            hits = c["branch_hits_per_token"]
            wire = c["worker_bytes_per_token"]
            rate = c["worker_mbit_s"]
            print(f"| {c['rtt_ms']:g} ms | {c['branches']} | {c['tpot_ms']:.2f} | "
                  f"{c['best_sd_tpot_ms']:.2f} ({c['best_sd_gamma']}) | "
                  f"{c['latency_vs_best_sd']:.3f} | {c['busy_vs_best_sd']:.2f} | "
                  f"{'–' if hits is None else f'{hits:.3f}'} | "
                  f"{'–' if wire is None else f'{wire:.0f}'} | "
                  f"{'–' if rate is None else f'{rate:.2f}'} | "
                  f"{'yes' if c['identical'] else 'NO'} |")
    print("\nverdicts:", json.dumps(verdicts(cells), indent=1))


def plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in cells if c["kind"] == "simulate"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for branches in sorted({c["branches"] for c in rows}):
        line = sorted((c for c in rows if c["branches"] == branches), key=lambda c: c["rtt_ms"])
        label = "one chain" if branches == 0 else f"draft tree ({branches} branches)"
        ax1.plot([c["rtt_ms"] for c in line], [c["latency_vs_best_sd"] for c in line], "o-",
                 label=label)
        ax2.plot([c["rtt_ms"] for c in line], [c["busy_vs_best_sd"] for c in line], "o-",
                 label=label)
    for ax, ylabel in ((ax1, "latency / best SD"), (ax2, "busy-site draft passes / best SD")):
        ax.axvline(PAPER_LIMIT_MS, color="grey", ls="--", lw=1)
        ax.text(PAPER_LIMIT_MS + 3, ax.get_ylim()[1] * 0.97 if ax is ax2 else 1.0,
                "WANSpec paper:\nadvantage ends ~70 ms", fontsize=8, va="top", color="grey")
        ax.set_xlabel("RTT (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax1.axhline(1.0, color="black", lw=0.8)
    ax2.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    fig.suptitle(f"adaptive policy, simulated (alpha {SIM_ALPHA}, 30/4 ms, shipped pair's "
                 "runner-up ranks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the cells here")
    ap.add_argument("--plot", type=Path, help="the simulated RTT plot")
    ap.add_argument("--report", type=Path, help="print the tables of a saved run")
    ap.add_argument("--quick", action="store_true", help="a small subset")
    ap.add_argument("--skip-emulate", action="store_true")
    ap.add_argument("--skip-simulate", action="store_true")
    ap.add_argument("--emulate-from", type=Path,
                    help="take the emulate cells of a saved --json (deterministic: the same "
                         "code gives the same cells) instead of running them again")
    args = ap.parse_args()
    if args.report:
        cells = json.loads(args.report.read_text())["cells"]
    else:
        if args.emulate_from:
            cells = [c for c in json.loads(args.emulate_from.read_text())["cells"]
                     if c["kind"] == "emulate"]
        else:
            cells = [] if args.skip_emulate else emulate_part(args.quick)
        cells += [] if args.skip_simulate else simulate_part(args.quick)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"cells": cells, "verdicts": verdicts(cells)},
                                            indent=1))
    report(cells)
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
