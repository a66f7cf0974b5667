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
    for name, d in m.get("devices", {}).items():
        t.add_row(f"device {name} busy / passes", f"{_ms(d['busy_s'])} / {d['passes']}")
        t.add_row(f"device {name} host compute", _ms(d["compute_s"]))
    return t


def print_generation(result: dict[str, Any], console: Console) -> None:
    console.print(result["text"], markup=False, highlight=False)
    console.print(metrics_table(result))
