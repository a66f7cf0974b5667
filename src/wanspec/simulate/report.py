"""Tables, CSV/JSON and plots of simulation records.

Why two table shapes: one point reads best as the emulator's per-mode table (every metric); a
sweep reads best as one row per point with, per policy, the three numbers the design is about
(latency relative to best SD, busy-site draft passes relative to best SD, stall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from wanspec.emulate import report as emulate_report
from wanspec.emulate.report import _f, write_json
from wanspec.simulate.config import PARAMS, POLICIES
from wanspec.baselines import BASELINES, LABELS, mode_label
from wanspec.tables import Column, Fit, FitTable

PARAM_COLUMNS = [p.field for p in PARAMS.values()] + ["match"]
METRIC_COLUMNS = [
    "mode", "requests", "tokens", "tpot_ms_mean", "tpot_ms_p95", "ttft_ms_mean",
    "e2e_ms_per_token", "speedup_vs_target", "latency_vs_best_sd",
    "busy_site_draft_passes_per_token", "busy_site_draft_passes_vs_best_sd", "best_sd_gamma",
    "sd_gamma", "latency_vs_best_sd", "busy_site_draft_passes_vs_best_sd",
    "worker_draft_passes_per_token", "worker_wasted_passes_per_token", "target_passes_per_token",
    "wasted_drafts_per_token", "stall_ms_per_token", "acceptance_rate", "per_token_acceptance",
    "mean_acceptance_length", "tokens_per_verify_round", "verify_rounds", "remote_windows",
    "local_windows", "plain_steps", "link_bytes_per_token", "identical_to_target_only",
]
COLUMNS = PARAM_COLUMNS + METRIC_COLUMNS

__all__ = ["mode_table", "plot", "sweep_table", "write_csv", "write_json"]


def point_label(rec: dict[str, Any], swept: Sequence[str]) -> str:
    return ", ".join(f"{k}={rec[k]:g}" for k in swept) if swept else f"rtt_ms={rec['rtt_ms']:g}"


def mode_table(records: Sequence[dict[str, Any]], title: str) -> FitTable:
    """Every mode of one point (the emulator's table, plus per-token acceptance)."""
    t = FitTable([Column("mode", justify="left"), Column("TPOT"), Column("p95", 4),
                  Column("x target", 2), Column("lat/best"), Column("busy/tok", 5),
                  Column("busy/best"), Column("wrk/tok", 9), Column("wasted/tok", 10),
                  Column("stall/tok", 3), Column("accept", 7), Column("tok acc", 6),
                  Column("tok/round", 8), Column("identical", 1)],
                 title=title,
                 caption="TPOT: time per output token (ms). busy: draft passes at the busy site; "
                         "wrk: at the worker; /tok: per committed token; /best: relative to best "
                         "SD (standard SD at its fastest window, g). accept: accepted / verified "
                         "drafts (as emulate); tok acc: per-token acceptance of the drafts a "
                         "verification tested (the SD analysis' alpha).")
    for r in records:
        t.add_row(
            mode_label(r), f"{r['tpot_ms_mean']:.2f}", f"{r['tpot_ms_p95']:.2f}",
            _f(r["speedup_vs_target"], "{:.2f}x"), _f(r["latency_vs_best_sd"], "{:.3f}"),
            f"{r['busy_site_draft_passes_per_token']:.2f}",
            _f(r["busy_site_draft_passes_vs_best_sd"], "{:.2f}"),
            _f(r["worker_draft_passes_per_token"]), f"{r['wasted_drafts_per_token']:.2f}",
            f"{r['stall_ms_per_token']:.2f}", f"{r['acceptance_rate']:.3f}",
            f"{r['per_token_acceptance']:.3f}",
            f"{r['tokens_per_verify_round']:.2f}",
            "[green]yes[/]" if r["identical_to_target_only"] else "[bold red]NO[/]",
        )
    return t


_SWEEP_CAPTION = ("TPOT in ms. best SD: standard SD at its fastest window (g). lat: TPOT / best "
                  "SD. busy: busy-site draft passes / best SD. stall: ms per token the busy site "
                  "idled waiting for the worker.")


def sweep_table(records: Sequence[dict[str, Any]], swept: Sequence[str],
                policies: Sequence[str]) -> Fit:
    """One row per point: the baselines' TPOT, then lat, busy and stall per policy; where that
    is too wide, one row per point and policy (every key number, whatever the width)."""
    names = list(swept or ["rtt_ms"])
    width = len(BASELINES) + len(policies)
    points = [records[i: i + width] for i in range(0, len(records), width)]
    wide = FitTable([*(Column(n) for n in names), Column("target", 3), Column("SD", 4),
                     Column("best SD"), Column("dyn SD", 2),
                     *(Column(f"{p}\n{m}", drop) for p in policies
                       for m, drop in (("lat", 0), ("busy", 0), ("stall", 1))),
                     Column("ok", justify="center")],
                    title="wanspec simulate", caption=_SWEEP_CAPTION)
    long = FitTable([*(Column(n) for n in names), Column("best SD"), Column("mode", justify="left"),
                     Column("lat"), Column("busy"), Column("stall"), Column("ok", justify="center")],
                    title="wanspec simulate", caption=_SWEEP_CAPTION)
    for row in points:
        by_mode = {r["mode"]: r for r in row}
        at = [f"{row[0][k]:g}" for k in names]
        best = by_mode["sd-best"]
        best_cell = f"{best['tpot_ms_mean']:.2f} g={best['sd_gamma']}"
        ok = all(r["identical_to_target_only"] for r in row)
        ok_cell = "[green]yes[/]" if ok else "[bold red]NO[/]"
        ratios = {p: (_f(by_mode[p]["latency_vs_best_sd"], "{:.3f}"),
                      _f(by_mode[p]["busy_site_draft_passes_vs_best_sd"]),
                      f"{by_mode[p]['stall_ms_per_token']:.2f}") for p in policies}
        wide.add_row(*at, f"{by_mode['target']['tpot_ms_mean']:.2f}",
                     f"{by_mode['sd']['tpot_ms_mean']:.2f}", best_cell,
                     f"{by_mode['sd-dynamic']['tpot_ms_mean']:.2f}",
                     *(cell for p in policies for cell in ratios[p]), ok_cell)
        for p in policies:
            r = by_mode[p]
            long.add_row(*at, best_cell, p, *ratios[p],
                         "[green]yes[/]" if r["identical_to_target_only"] else "[bold red]NO[/]")
    return Fit(*wide.candidates, long.table)


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """The emulator's CSV writer with the simulator's columns."""
    emulate_report.write_csv(records, path, COLUMNS)


def plot(records: Sequence[dict[str, Any]], path: Path, swept: Sequence[str],
         policies: Sequence[str], title: str = "") -> None:
    """Three panels against the first swept parameter: latency / SD, busy-site draft passes /
    SD, stall per token; one colour per policy, one line style per value of the other sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = swept[0] if swept else "rtt_ms"
    others = list(swept[1:])
    groups = list(dict.fromkeys(tuple(r[k] for k in others) for r in records))
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "v", "D", "x", "+", "*"]
    order = [*BASELINES, *POLICIES]  # one colour per mode in every figure
    colors = {m: f"C{order.index(m)}" if m in order else "k" for m in [*BASELINES, *policies]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    # target-only is usually far above everything else: draw it only if it does not squash
    # the panel, else name its ratio in a corner
    t_lat = [r["latency_vs_best_sd"] or 0.0 for r in records if r["mode"] == "target"]
    rest = [r["latency_vs_best_sd"] or 0.0 for r in records if r["mode"] != "target"]
    show_target = not t_lat or not rest or max(t_lat) <= 1.4 * max(rest)
    if not show_target:
        lo, hi = min(t_lat), max(t_lat)
        span = f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}-{hi:.2f}"
        axes[0].text(0.02, 0.97, f"target-only: {span} x best SD (off scale)",
                     transform=axes[0].transAxes, va="top", fontsize=8, color=colors["target"])
    def series(mode: str, g: tuple) -> list[dict[str, Any]]:
        rs = [r for r in records if r["mode"] == mode and tuple(r[k] for k in others) == g]
        return sorted(rs, key=lambda r: r[x_key])

    # baselines that do not depend on the other swept parameters are drawn (and named) once
    def plotted(mode: str, g: tuple) -> list[tuple[Any, Any]]:
        return [(r["latency_vs_best_sd"], r["busy_site_draft_passes_vs_best_sd"])
                for r in series(mode, g)]

    def same(mode: str) -> bool:
        return all(plotted(mode, g) == plotted(mode, groups[0]) for g in groups)

    once = {m for m in BASELINES if same(m)}
    for gi, g in enumerate(groups):
        suffix = ", ".join(f"{k}={v:g}" for k, v in zip(others, g))
        for mode in [*BASELINES, *policies]:
            if mode in once and gi > 0:
                continue
            rs = series(mode, g)
            if not rs:
                continue
            x = [r[x_key] for r in rs]
            base = mode in BASELINES
            kw = dict(color=colors[mode], ls="--" if base else styles[gi % len(styles)],
                      marker=None if base else markers[gi % len(markers)], ms=4, lw=1.2 if base else 1.6)
            label = LABELS.get(mode, mode) + (f" ({suffix})" if suffix and mode not in once else "")
            if mode != "target" or show_target:
                axes[0].plot(x, [r["latency_vs_best_sd"] or 0.0 for r in rs], label=label,
                             **kw)
            if mode != "target":
                axes[1].plot(x, [r["busy_site_draft_passes_vs_best_sd"] or 0.0 for r in rs],
                             label=label, **kw)
            if not base:
                axes[2].plot(x, [r["stall_ms_per_token"] for r in rs], label=label, **kw)
    axes[0].set_ylabel("time per output token / best SD")
    axes[1].set_ylabel("busy-site draft passes / best SD")
    axes[2].set_ylabel("busy-site stall (ms per token)")
    unit = {"rtt_ms": "RTT (ms)"}.get(x_key, x_key)
    for ax in axes:
        ax.set_xlabel(unit)
        ax.grid(alpha=0.3)
    axes[0].axhline(1.05, color="grey", lw=0.8, ls=":")
    axes[1].axhline(0.35, color="grey", lw=0.8, ls=":")
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = min(len(labels), 6) or 1
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
