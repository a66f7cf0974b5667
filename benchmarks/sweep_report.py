"""Turn ``wanspec emulate --json`` records into the markdown tables of docs/results.md and check
the issue's bars against them (printed, never asserted: speed goals live here, not in tests).

    .venv/bin/wanspec emulate --sweep 0,10,20,30,50,70,100,150 --json > benchmarks/results/sweep.json
    .venv/bin/python benchmarks/sweep_report.py benchmarks/results/sweep.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


def table(records: list[dict]) -> str:
    head = ("| RTT ms | mode | TPOT mean ms | TPOT p95 ms | speedup vs target | latency vs SD | "
            "busy draft passes/tok | busy vs SD | worker passes/tok | wasted/tok | stall ms/tok | "
            "acceptance | identical |")
    lines = [head, "|" + "---|" * 13]
    for r in records:
        lines.append(
            f"| {r['rtt_ms']:g} | {r['mode']} | {r['tpot_ms_mean']:.2f} | {r['tpot_ms_p95']:.2f} | "
            f"{fmt(r['speedup_vs_target'])} | {fmt(r['latency_vs_standard_sd'], '{:.3f}')} | "
            f"{r['busy_site_draft_passes_per_token']:.2f} | "
            f"{fmt(r['busy_site_draft_passes_vs_standard_sd'])} | "
            f"{r['worker_draft_passes_per_token']:.2f} | {r['wasted_drafts_per_token']:.2f} | "
            f"{r['stall_ms_per_token']:.2f} | {r['acceptance_rate']:.3f} | "
            f"{'yes' if r['identical_to_target_only'] else 'NO'} |")
    return "\n".join(lines)


def bars(records: list[dict]) -> list[str]:
    out = []
    by = {(r["rtt_ms"], r["mode"]): r for r in records}
    rtts = sorted({r["rtt_ms"] for r in records})
    for rtt in [x for x in rtts if x <= 30]:
        best = None
        for mode in ("entropy", "adaptive"):
            r = by.get((rtt, mode))
            if r is None:
                continue
            ok = (r["busy_site_draft_passes_vs_standard_sd"] or 0) <= 0.5 and (r["latency_vs_standard_sd"] or 9) <= 1.05
            out.append(f"RTT {rtt:g} ms {mode}: busy passes {r['busy_site_draft_passes_vs_standard_sd']:.2f}x SD "
                       f"(bar <= 0.5), latency {r['latency_vs_standard_sd']:.3f}x SD (bar <= 1.05): "
                       f"{'MET' if ok else 'missed'}")
            best = best or ok
    for rtt in rtts:
        r, t = by.get((rtt, "adaptive")), by.get((rtt, "target"))
        if r and t:
            ok = r["tpot_ms_mean"] <= t["tpot_ms_mean"]
            out.append(f"RTT {rtt:g} ms adaptive vs target-only: {r['tpot_ms_mean']:.2f} vs "
                       f"{t['tpot_ms_mean']:.2f} ms/token: {'MET' if ok else 'missed'}")
    r = by.get((100.0, "adaptive"))
    if r:
        ok = r["latency_vs_standard_sd"] <= 1.15
        out.append(f"RTT 100 ms adaptive latency {r['latency_vs_standard_sd']:.3f}x SD (bar <= 1.15): "
                   f"{'MET' if ok else 'missed'}")
    out.append("every output identical to target-only: "
               f"{'MET' if all(r['identical_to_target_only'] for r in records) else 'VIOLATED'}")
    return out


def main() -> None:
    records = json.loads(Path(sys.argv[1]).read_text())
    print(table(records))
    print()
    for line in bars(records):
        print("-", line)


if __name__ == "__main__":
    main()
