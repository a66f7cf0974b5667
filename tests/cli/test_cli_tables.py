"""Report tables in an 80-column terminal: the key numbers whole, never squeezed to ``…``.

The records come from the simulator (seconds); ``emulate`` prints the same kinds of record with
the same tables.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from wanspec.emulate.load import Closed
from wanspec.emulate.report import load_table, rtt_table
from wanspec.simulate.config import POLICIES, SimConfig
from wanspec.simulate.load import run_load
from wanspec.simulate.report import mode_table, sweep_table
from wanspec.simulate.sweep import parse_sweep, run_sweep

BASE = SimConfig(requests=2, max_tokens=16)


@pytest.fixture(scope="module")
def sweep_records():
    return run_sweep(BASE, [parse_sweep("rtt=0,50")], POLICIES, jobs=1)


@pytest.fixture(scope="module")
def load_records():
    return run_load(BASE, [Closed(4)], POLICIES, rtts=[30.0])


def render(table, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines()), text
    return text


def cells(text: str) -> set[str]:
    return {c.strip() for line in text.splitlines() for c in line.split("│")}


def test_emulate_table_keeps_the_key_numbers_at_80_columns(sweep_records):
    text = render(rtt_table(sweep_records, 50.0), 80)
    assert "…" not in text
    got = cells(text)
    for r in (x for x in sweep_records if x["rtt_ms"] == 50.0):
        assert f"{r['tpot_ms_mean']:.2f}" in got, (r["mode"], text)
        if r["latency_vs_best_sd"] is not None:
            assert f"{r['latency_vs_best_sd']:.3f}" in got, (r["mode"], text)
            assert f"{r['busy_site_draft_passes_vs_best_sd']:.2f}" in got, (r["mode"], text)
    assert "Hidden at this width:" in text  # and it says what it left out
    wide = render(rtt_table(sweep_records, 50.0), 200)
    assert "Hidden" not in wide and "wasted/tok" in wide


def test_simulate_point_table_at_80_columns(sweep_records):
    point = [r for r in sweep_records if r["rtt_ms"] == 0.0]
    text = render(mode_table(point, "RTT 0 ms"), 80)
    assert "…" not in text
    got = cells(text)
    assert {f"{r['tpot_ms_mean']:.2f}" for r in point} <= got


@pytest.mark.parametrize("width", [80, 120])
def test_simulate_sweep_table_keeps_every_policy_ratio(sweep_records, width):
    text = render(sweep_table(sweep_records, ["rtt_ms"], POLICIES), width)
    assert "…" not in text
    flat = " ".join(text.split())
    for r in sweep_records:
        if r["mode"] in POLICIES:
            assert f"{r['latency_vs_best_sd']:.3f}" in flat, (r["mode"], text)
            assert f"{r['busy_site_draft_passes_vs_best_sd']:.2f}" in flat, (r["mode"], text)
    for policy in POLICIES:
        assert policy in flat


def test_load_table_at_80_columns(load_records):
    text = render(load_table(load_records, "c=4", 30.0), 80)
    assert "…" not in text
    got = cells(text)
    for r in load_records:
        assert f"{r['throughput_tok_s']:.0f}" in got and f"{r['tpot_ms_p95']:.1f}" in got, text
        assert f"{r['throughput_vs_best_sd']:.2f}x" in got, text
