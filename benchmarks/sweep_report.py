"""Turn ``wanspec emulate --json`` records into the markdown table of docs/results.md and check
the issue-10 bars on them (printed, never asserted: speed goals live here, not in tests).

    .venv/bin/wanspec emulate --sweep 0,10,20,30,50,70,100,150 --json > benchmarks/results/sweep.json
    .venv/bin/python benchmarks/sweep_report.py benchmarks/results/sweep.json

Ratios are to best SD (standard SD at its fastest window, searched in the same run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wanspec.baselines import mode_label


def fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


def table(records: list[dict]) -> str:
    head = ("| RTT ms | mode | TPOT mean ms | TPOT p95 ms | speedup vs target | latency vs best SD "
            "| busy draft passes/tok | busy vs best SD | worker passes/tok | wasted/tok | "
            "stall ms/tok | acceptance | identical |")
    lines = [head, "|" + "---|" * 13]
    for r in records:
        lines.append(
            f"| {r['rtt_ms']:g} | {mode_label(r)} | {r['tpot_ms_mean']:.2f} | "
            f"{r['tpot_ms_p95']:.2f} | {fmt(r['speedup_vs_target'])} | "
            f"{fmt(r['latency_vs_best_sd'], '{:.3f}')} | "
            f"{r['busy_site_draft_passes_per_token']:.2f} | "
            f"{fmt(r['busy_site_draft_passes_vs_best_sd'])} | "
            f"{r['worker_draft_passes_per_token']:.2f} | {r['wasted_drafts_per_token']:.2f} | "
            f"{r['stall_ms_per_token']:.2f} | {r['acceptance_rate']:.3f} | "
            f"{'yes' if r['identical_to_target_only'] else 'NO'} |")
    return "\n".join(lines)


def bars(records: list[dict]) -> list[str]:
    out = []
    by = {(r["rtt_ms"], r["mode"]): r for r in records}
    rtts = sorted({r["rtt_ms"] for r in records})
    for rtt in rtts:
        r, t = by.get((rtt, "adaptive")), by.get((rtt, "target"))
        if r is None or t is None:
            continue
        lat, busy = r["latency_vs_best_sd"], r["busy_site_draft_passes_vs_best_sd"]
        line = (f"RTT {rtt:g} ms adaptive: latency {lat:.3f}x best SD, busy-site draft passes "
                f"{busy:.2f}x best SD, {r['speedup_vs_target']:.2f}x target-only")
        if rtt <= 30:
            line += f"; P1 (<= 1.05, <= 0.35): {'met' if lat <= 1.05 and busy <= 0.35 else 'missed'}"
        line += f"; P3 (>= 1x target-only): {'met' if r['speedup_vs_target'] >= 1 else 'missed'}"
        out.append(line)
    out.append("every output identical to target-only: "
               f"{'met' if all(r['identical_to_target_only'] for r in records) else 'VIOLATED'}")
    return out


def main() -> None:
    records = json.loads(Path(sys.argv[1]).read_text())
    print(table(records))
    print()
    for line in bars(records):
        print("-", line)


if __name__ == "__main__":
    main()
