"""Tables, JSON/CSV and plots of emulation records."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from wanspec.baselines import BASELINES, mode_label
from wanspec.tables import Column, FitTable

COLUMNS = [
    "rtt_ms", "mode", "sd_gamma", "requests", "tokens", "tpot_ms_mean", "tpot_ms_p95",
    "ttft_ms_mean", "e2e_ms_per_token", "speedup_vs_target", "latency_vs_best_sd",
    "busy_site_draft_passes_per_token", "busy_site_draft_passes_vs_best_sd", "best_sd_gamma",
    "latency_vs_standard_sd", "busy_site_draft_passes_vs_standard_sd",
    "worker_draft_passes_per_token", "target_passes_per_token", "wasted_drafts_per_token",
    "stall_ms_per_token", "branch_hits_per_token", "worker_bytes_per_token",
    "controller_bytes_per_token", "acceptance_rate", "mean_acceptance_length",
    "host_overhead", "host_stack_ms", "identical_to_target_only",
]


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    """A number, or a dash where a ratio has no baseline."""
    return "–" if x is None else fmt.format(x)


def rtt_table(records: Sequence[dict[str, Any]], rtt: float, title_extra: str = "") -> FitTable:
    """Every mode at one RTT; at 80 columns: TPOT, speed-up, and the two ratios to best SD."""
    t = FitTable([Column("mode", justify="left"), Column("TPOT"), Column("p95", 4),
                  Column("x target", 2), Column("lat/best"), Column("busy/tok", 5),
                  Column("busy/best"), Column("wrk/tok", 7), Column("wasted/tok", 8),
                  Column("stall/tok", 3), Column("accept", 6), Column("identical", 1)],
                 title=f"RTT {rtt:g} ms{title_extra}",
                 caption="TPOT: time per output token (ms). busy: draft passes at the busy site; "
                         "wrk: at the worker; /tok: per committed token; /best: relative to best "
                         "SD (standard SD at its fastest window g, searched in this run).")
    for r in records:
        if r["rtt_ms"] != rtt:
            continue
        t.add_row(
            mode_label(r), f"{r['tpot_ms_mean']:.2f}", f"{r['tpot_ms_p95']:.2f}",
            _f(r["speedup_vs_target"], "{:.2f}x"), _f(r["latency_vs_best_sd"], "{:.3f}"),
            f"{r['busy_site_draft_passes_per_token']:.2f}",
            _f(r["busy_site_draft_passes_vs_best_sd"], "{:.2f}"),
            f"{r['worker_draft_passes_per_token']:.2f}", f"{r['wasted_drafts_per_token']:.2f}",
            f"{r['stall_ms_per_token']:.2f}", f"{r['acceptance_rate']:.3f}",
            "[green]yes[/]" if r["identical_to_target_only"] else "[bold red]NO[/]",
        )
    return t


LOAD_COLUMNS = [
    "load", "concurrency", "request_rate", "rtt_ms", "mode", "sd_gamma", "requests", "tokens",
    "makespan_s", "throughput_tok_s", "e2e_ms_per_token", "throughput_vs_target", "throughput_vs_best_sd",
    "goodput_tok_s", "slo_tpot_ms", "admission", "slo_attained", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99",
    "tpot_ms_p50", "tpot_ms_p95", "tpot_ms_p99", "tpot_p95_vs_best_sd", "best_sd_gamma",
    "busy_target_frac", "busy_draft_frac", "busy_idle_frac", "busy_passes", "busy_mean_batch",
    "busy_site_draft_passes_per_token", "worker_utilisation", "worker_mean_batch",
    "host_overhead", "host_stack_ms", "identical_to_target_only",
]


def load_table(records: Sequence[dict[str, Any]], load: str, rtt: float) -> FitTable:
    """One load level at one RTT: what each mode gets out of the busy site; at 80 columns:
    throughput, its ratios, goodput and p95 TPOT."""
    t = FitTable([Column("mode", justify="left"), Column("tok/s"), Column("x target", 3),
                  Column("x best"), Column("goodput", 2), Column("TTFT p50", 6),
                  Column("TTFT p95", 5), Column("TPOT p50", 4), Column("TPOT p95"),
                  Column("TPOT p99", 7), Column("busy t/d/idle", 10), Column("batch", 8),
                  Column("wrk", 9), Column("identical", 1)],
                 title=f"{load}, RTT {rtt:g} ms",
                 caption="tok/s: committed tokens per second (busy-site throughput); goodput: of "
                         "requests meeting the TPOT SLO; TPOT per request (ms); busy: the busy "
                         "accelerator's time in target / draft passes / idle (%); batch: mean "
                         "requests per busy pass; wrk: worker utilisation.")
    for r in records:
        if r["load"] != load or r["rtt_ms"] != rtt:
            continue
        wrk = r.get("worker_utilisation")
        t.add_row(
            mode_label(r), f"{r['throughput_tok_s']:.0f}", f"{r['throughput_vs_target']:.2f}x",
            f"{r['throughput_vs_best_sd']:.2f}x", f"{r['goodput_tok_s']:.0f}",
            f"{r['ttft_ms_p50']:.0f}", f"{r['ttft_ms_p95']:.0f}", f"{r['tpot_ms_p50']:.1f}",
            f"{r['tpot_ms_p95']:.1f}", f"{r['tpot_ms_p99']:.1f}",
            f"{100 * r['busy_target_frac']:.0f}/{100 * r['busy_draft_frac']:.0f}/"
            f"{100 * r['busy_idle_frac']:.0f}",
            f"{r['busy_mean_batch']:.1f}", "–" if wrk is None else f"{100 * wrk:.0f}%",
            "[green]yes[/]" if r["identical_to_target_only"] else "[bold red]NO[/]",
        )
    return t


def plot_load(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Busy-site throughput vs p95 TPOT, one line per mode through its load levels; one panel
    per RTT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtts = sorted({r["rtt_ms"] for r in records})
    fig, axes = plt.subplots(1, len(rtts), figsize=(max(7.5, 5.5 * len(rtts)), 4.8),
                             squeeze=False)
    for ax, rtt in zip(axes[0], rtts):
        modes = dict.fromkeys(r["mode"] for r in records if r["rtt_ms"] == rtt)
        for mode in modes:
            rs = [r for r in records if r["rtt_ms"] == rtt and r["mode"] == mode]
            base = mode in BASELINES
            ax.plot([r["tpot_ms_p95"] for r in rs], [r["throughput_tok_s"] for r in rs],
                    ls="--" if base else "-", marker="s" if base else "o",
                    label=mode_label(rs[0]) if mode != "sd-best" else "best SD")
            for r in rs:
                ax.annotate(r["load"], (r["tpot_ms_p95"], r["throughput_tok_s"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"RTT {rtt:g} ms", fontsize=9)
        ax.set_xlabel("p95 time per output token (ms)")
        ax.set_ylabel("busy-site throughput (tokens/s)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(records: Sequence[dict[str, Any]], path: Path | None) -> str:
    text = json.dumps(list(records), indent=2)
    if path is not None:
        path.write_text(text + "\n")
    return text


def write_csv(records: Sequence[dict[str, Any]], path: Path,
              columns: Sequence[str] = COLUMNS) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)


def plot(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Latency ratio and busy-site draft-pass ratio vs RTT, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in dict.fromkeys(r["mode"] for r in records) if m != "target"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in modes:
        rs = sorted((r for r in records if r["mode"] == mode), key=lambda r: r["rtt_ms"])
        x = [r["rtt_ms"] for r in rs]
        base = mode in BASELINES
        label = mode_label(rs[0])
        kw = dict(ls="--" if base else "-", marker="" if base else "o", label=label)
        axes[0].plot(x, [r["latency_vs_best_sd"] for r in rs], **kw)  # type: ignore[arg-type]
        axes[1].plot(x, [r["busy_site_draft_passes_vs_best_sd"] or 0.0 for r in rs],
                     **kw)  # type: ignore[arg-type]
    axes[0].set_ylabel("time per output token / best SD")
    axes[1].set_ylabel("busy-site draft passes / best SD")
    for ax in axes:
        ax.set_xlabel("RTT (ms)")
        ax.grid(alpha=0.3)
    axes[0].axhline(1.05, color="grey", lw=0.8, ls=":")
    axes[1].axhline(0.35, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
