"""Regenerate the figures and numbers of docs/simulator.md (a few seconds per figure).

    .venv/bin/python benchmarks/simulate_figures.py            # writes docs/img/simulate_*.png
                                                               # and benchmarks/results/simulate_figures.json

Each figure is exactly what a ``wanspec simulate`` command draws (the command is printed); the
"limits" printed per policy are read off the same records:

* parity: the largest RTT up to which TPOT stays within 5% of best SD (from RTT 0 on);
* offload parity: the largest RTT up to which, in addition, the busy site makes at most 0.35 of
  best SD's draft passes (the issue-10 bar);
* offload gone: the first RTT from which busy-site draft passes are >= 0.9 of best SD's.

Best SD is standard SD at its fastest window (1..10) for each point (:mod:`wanspec.baselines`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.report import plot
from wanspec.simulate.sweep import parse_sweep, run_sweep, swept_names

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
# the paper-like regime; 64 requests x 128 tokens per point and mode (seed-to-seed spread of
# the ratios is then about 1-2%)
PAPER = SimConfig(alpha=0.8, target_ms=30.0, draft_ms=4.0, verify_per_token_ms=0.5, gamma=4,
                  requests=64)

FIGURES: list[tuple[str, SimConfig, list[str], tuple[str, ...], str]] = [
    ("simulate_rtt.png", PAPER, ["rtt=0:150:10"], POLICIES, ""),
    ("simulate_rtt_alpha.png", PAPER, ["rtt=0:150:10", "alpha=0.6,0.8,0.9"],
     ("remote", "entropy", "adaptive"), "--policy remote,entropy,adaptive"),
    ("simulate_max_slowdown.png", PAPER, ["rtt=0:150:10", "max_slowdown=1,1.05,1.1,1.2"],
     ("adaptive",), "--policy adaptive"),
    ("simulate_separation.png", PAPER, ["separation=0:3:0.5"], ("entropy", "adaptive"),
     "--rtt 40ms --policy entropy,adaptive"),
    ("simulate_bursty.png", replace(PAPER, match="markov", burst=0.8), ["rtt=0:150:10"], POLICIES,
     "--match markov --burst 0.8"),
]


def limits(records: list[dict[str, Any]], policy: str, group: dict[str, Any]) -> dict[str, Any]:
    rs = sorted((r for r in records if r["mode"] == policy
                 and all(r[k] == v for k, v in group.items())), key=lambda r: r["rtt_ms"])
    parity = offload = None
    for r in rs:
        if r["latency_vs_best_sd"] > 1.05:
            break
        parity = r
    for r in rs:
        if r["latency_vs_best_sd"] > 1.05 or r["busy_site_draft_passes_vs_best_sd"] > 0.35:
            break
        offload = r
    busy90 = next((r["rtt_ms"] for r in rs if r["busy_site_draft_passes_vs_best_sd"] >= 0.9),
                  None)
    return {"policy": policy, **group,
            "parity_rtt_ms": None if parity is None else parity["rtt_ms"],
            "busy_vs_best_at_parity": None if parity is None
            else parity["busy_site_draft_passes_vs_best_sd"],
            "offload_parity_rtt_ms": None if offload is None else offload["rtt_ms"],
            "busy_ge_0.9_from_rtt_ms": busy90,
            "lat_vs_best_sd": {r["rtt_ms"]: round(r["latency_vs_best_sd"], 3) for r in rs},
            "busy_vs_best_sd": {r["rtt_ms"]: round(r["busy_site_draft_passes_vs_best_sd"], 3)
                                for r in rs}}


KEEP = ("mode", "tpot_ms_mean", "tpot_ms_p95", "latency_vs_best_sd",
        "busy_site_draft_passes_per_token", "busy_site_draft_passes_vs_best_sd",
        "worker_draft_passes_per_token", "stall_ms_per_token", "tokens_per_verify_round",
        "identical_to_target_only")


def slim(rec: dict[str, Any], swept: list[str]) -> dict[str, Any]:
    """The swept parameters and the plotted/quoted metrics of a record (all of them: --json)."""
    def r4(x: Any) -> Any:
        return round(x, 4) if isinstance(x, float) else x

    return {**{k: rec[k] for k in swept}, **{k: r4(rec[k]) for k in KEEP}}


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name, cfg, sweeps_txt, policies, flags in FIGURES:
        sweeps = [parse_sweep(s) for s in sweeps_txt]
        t0 = time.perf_counter()
        records = run_sweep(cfg, sweeps, policies)
        wall = time.perf_counter() - t0
        swept = swept_names(sweeps)
        plot(records, IMG / name, swept, policies,
             title=cfg.describe() + f"; swept: {', '.join(swept)}")
        cmd = ("wanspec simulate --requests 64 " + " ".join(f"--sweep {s}" for s in sweeps_txt)
               + (f" {flags}" if flags else "") + f" --plot docs/img/{name}")
        print(f"\n{cmd}    # {wall:.1f} s")
        entry: dict[str, Any] = {"command": cmd, "wall_s": wall, "limits": []}
        if swept[0] == "rtt_ms":
            others = swept[1:]
            groups = list(dict.fromkeys(tuple(r[k] for k in others) for r in records))
            for g in groups:
                for p in policies:
                    lim = limits(records, p, dict(zip(others, g)))
                    entry["limits"].append(lim)
                    where = ", ".join(f"{k}={v:g}" for k, v in zip(others, g))
                    busy = lim["busy_vs_best_at_parity"]
                    print(f"  {p:9s} {where:22s} parity up to {lim['parity_rtt_ms']} ms "
                          f"(busy/best there {busy if busy is None else round(busy, 2)}), "
                          f"offload parity up to {lim['offload_parity_rtt_ms']} ms, "
                          f"busy/best >= 0.9 from {lim['busy_ge_0.9_from_rtt_ms']} ms")
                    print("     RTT  " + "  ".join(
                        f"{k:g}:{v:.2f}/{lim['busy_vs_best_sd'][k]:.2f}"
                        for k, v in lim["lat_vs_best_sd"].items()
                        if k in (0, 10, 20, 30, 50, 70, 100, 150)))
        else:
            for r in records:
                if r["mode"] in policies:
                    print(f"  {r['mode']:9s} {swept[0]}={r[swept[0]]:g}: lat/best "
                          f"{r['latency_vs_best_sd']:.3f} busy/best "
                          f"{r['busy_site_draft_passes_vs_best_sd']:.2f} stall "
                          f"{r['stall_ms_per_token']:.2f} ms/tok")
        if not entry["limits"]:  # RTT sweeps are summarised by their limits (lat/busy per RTT)
            entry["records"] = [slim(r, swept) for r in records]
        out[name] = entry
    res = ROOT / "benchmarks" / "results" / "simulate_figures.json"
    res.write_text(json.dumps(out, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
