"""Tables for ``wanspec bench`` and ``wanspec probe``, each narrower than 80 columns.

Why narrow: these tools run on servers over SSH and in CI logs; a long message (an error, a
recommendation) is a line of its own after the table (:func:`notes`), never a column that
widens it.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from wanspec.bench.runner import METRICS, QUANTILES

_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def latency_table(s: dict[str, Any]) -> Table:
    t = Table(title="latency (ms)", header_style="bold", title_justify="left")
    t.add_column("metric")
    for col in ("mean", *(f"p{q}" for q in QUANTILES)):
        t.add_column(col, justify="right")
    for m in METRICS:
        t.add_row(_NAMES[m], _ms(s[f"{m}_ms_mean"]), *(_ms(s[f"{m}_ms_p{q}"]) for q in QUANTILES))
    return t


def _slo(s: dict[str, Any]) -> str:
    parts = [f"TPOT <= {s['slo_tpot_ms']:g} ms" if s["slo_tpot_ms"] is not None else "",
             f"TTFT <= {s['slo_ttft_ms']:g} ms" if s["slo_ttft_ms"] is not None else ""]
    return ", ".join(p for p in parts if p) or "no SLO"


def throughput_table(s: dict[str, Any]) -> Table:
    t = Table(title="throughput", header_style="bold", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("requests completed / failed", f"{s['completed']} / {s['failed']}")
    t.add_row("duration", f"{s['duration_s']:.2f} s")
    t.add_row("request throughput", f"{s['request_throughput']:.2f} req/s")
    t.add_row("output throughput", f"{s['output_throughput_tok_s']:.1f} tok/s")
    t.add_row(f"goodput ({_slo(s)})", f"{s['goodput_tok_s']:.1f} tok/s")
    t.add_row("requests meeting the SLO", f"{100 * s['slo_attained']:.0f}%")
    t.add_row("output tokens", str(s["output_tokens"]))
    per_chunk = s["tokens_per_chunk"]
    t.add_row("tokens per chunk", "-" if per_chunk is None else f"{per_chunk:.2f}")
    if s["completed"] and s["tokens_from_usage"] < s["completed"]:
        t.add_row("tokens counted from chunks", f"{s['completed'] - s['tokens_from_usage']} req")
    return t


def errors_table(s: dict[str, Any]) -> Table | None:
    if not s["errors"]:
        return None
    t = Table(title="errors", header_style="bold", title_justify="left")
    t.add_column("kind")
    t.add_column("requests", justify="right")
    for kind, n in s["errors"].items():
        t.add_row(kind, str(n))
    return t


def error_notes(s: dict[str, Any]) -> list[str]:
    """The first message of each kind of error, one line each."""
    return [f"{kind}: {message}" for kind, message in s["error_examples"].items()]


def probe_table(records: list[dict[str, Any]]) -> Table:
    """One row per target (the recommendations: :func:`recommendation_notes`)."""
    t = Table(title="probe", header_style="bold", title_justify="left")
    t.add_column("target", overflow="fold", max_width=26)
    t.add_column("RTT p50", justify="right")
    t.add_column("p95", justify="right")
    t.add_column("TTFT p50", justify="right")
    t.add_column("p95", justify="right")
    t.add_column("ok", justify="right")
    for r in records:
        rtt, ttft = r["rtt_ms"], r.get("ttft_ms")
        t.add_row(r["target"], _ms(rtt["p50"]), _ms(rtt["p95"]),
                  _ms(ttft["p50"]) if ttft else "-", _ms(ttft["p95"]) if ttft else "-",
                  f"{r['ok']}/{r['samples']}")
    return t


def recommendation_notes(records: list[dict[str, Any]]) -> list[str]:
    return [f"{r['target']}: {r['recommendation']}" for r in records]
