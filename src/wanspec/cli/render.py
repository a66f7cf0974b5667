"""Rich rendering of results: what a person at a terminal reads."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def metrics_table(result: dict[str, Any], title: str = "metrics") -> Table:
    m = result["metrics"]
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("mode", result["mode"])
    t.add_row("timing", result.get("timing", "measured"))
    t.add_row("finish reason", result["finish_reason"])
    t.add_row("prompt tokens", str(result["prompt_tokens"]))
    t.add_row("committed tokens", str(m["committed_tokens"]))
    t.add_row("target passes", str(m["target_passes"]))
    for site, n in m["draft_passes"].items():
        t.add_row(f"draft passes ({site})", str(n))
    if m["drafted_tokens"]:
        t.add_row("drafted / accepted", f"{m['drafted_tokens']} / {m['accepted_tokens']}")
        t.add_row("acceptance rate", f"{m['acceptance_rate']:.3f}")
        t.add_row("mean acceptance length", f"{m['mean_acceptance_length']:.2f}")
        per = " ".join(f"{a:.2f}" for a in m["per_position_acceptance"])
        t.add_row("per-position acceptance", per)
    t.add_row("TTFT", _ms(m["ttft_s"]))
    t.add_row("TPOT mean / p50 / p95",
              f"{_ms(m['tpot_s_mean'])} / {_ms(m['tpot_s_p50'])} / {_ms(m['tpot_s_p95'])}")
    t.add_row("wall time", _ms(m["wall_s"]))
    if m.get("worker") is not None:
        moves = m.get("worker_moves", 0)
        t.add_row("worker", m["worker"] + (f" (after {moves} move{'s' * (moves > 1)})"
                                           if moves else ""))
    for name, d in m.get("devices", {}).items():
        t.add_row(f"device {name} busy / passes", f"{_ms(d['busy_s'])} / {d['passes']}")
        t.add_row(f"device {name} host compute", _ms(d["compute_s"]))
        if "idle_loop_cpu_s" in d:
            t.add_row(f"device {name} idle, loop CPU", _ms(d["idle_loop_cpu_s"]))
        if d.get("turnarounds"):
            t.add_row(f"device {name} turnaround (host between passes)",
                      f"{_ms(d['turnaround_s'] / d['turnarounds'])} x {d['turnarounds']}")
    return t


def print_generation(result: dict[str, Any], console: Console) -> None:
    console.print(result["text"], markup=False, highlight=False)
    console.print(metrics_table(result))


def workers_table(workers: list[dict[str, Any]]) -> Table:
    """Per-worker state of a controller with several workers (``WorkerPool.describe``); each
    worker's last error is a caption line, so the table fits 80 columns."""
    t = Table(title="workers", show_header=True, header_style="bold", caption_justify="left")
    t.add_column("worker", no_wrap=True)
    for name in ("up", "RTT", "demand", "acceptance", "requests", "lost"):
        t.add_column(name, justify="left" if name == "up" else "right")
    for w in workers:
        rtt = "-" if w["rtt_ms"] is None else f"{w['rtt_ms']:.1f} ms"
        acceptance = "-" if w["acceptance"] is None else f"{w['acceptance']:.3f}"
        t.add_row(w["worker"], "yes" if w["up"] else "no", rtt, f"{w['demand']:.2f}",
                  acceptance, str(w["placed"]), str(w["lost"]))
    errors = [f"{w['worker']}: {w['last_error']}" for w in workers if w["last_error"]]
    t.caption = "\n".join(errors) or None
    return t
