"""benchmarks/robustness.py: the verdict logic, and its quick mode end to end (a CI-sized run)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness.py"


def _module():
    spec = importlib.util.spec_from_file_location("robustness", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("robustness", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _cell(rtt: float, latency: float, busy: float, speedup: float = 1.5, **where) -> dict:
    cell = {"decoding": "greedy", "prompts": "heldout", "costs": "30/4", "link": "clean",
            "rtt_ms": rtt, "latency_vs_best_sd": latency, "busy_vs_best_sd": busy,
            "speedup_vs_target": speedup, "identical": True}
    cell.update(where)
    return cell


def test_verdicts_count_p1_only_at_low_rtt_and_need_both_conditions():
    rb = _module()
    cells = [
        _cell(10, 0.95, 0.20),                   # meets both
        _cell(30, 1.04, 0.40),                   # latency only
        _cell(20, 1.06, 0.10, costs="60/2"),     # passes only
        _cell(100, 1.30, 0.90),                  # RTT above the bar's range: not counted
    ]
    v = rb.verdicts(cells, [])
    assert v["p1_share"] == pytest.approx(1 / 3)
    assert v["p1_latency_share"] == pytest.approx(2 / 3)
    assert v["p1_busy_share"] == pytest.approx(2 / 3)
    assert v["p1_met"] is False
    assert v["p1_default_cells"] == [(10, True), (30, False)]
    assert v["p1_default_met"] is False
    assert v["p3_met"] is True and v["identical"] is True


def test_verdicts_flag_slower_than_target_and_differing_outputs():
    rb = _module()
    v = rb.verdicts([_cell(10, 0.9, 0.1)], [_cell(50, 1.0, 0.0, speedup=0.999, identical=False)])
    assert v["p3_met"] is False
    assert v["p3_slower_than_target"] == ["greedy/heldout/30/4/clean/rtt 50"]
    assert v["identical"] is False


def test_quick_mode_runs_both_grids_and_report_reproduces_them(tmp_path: Path):
    out = tmp_path / "quick.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--jobs", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert len(result["emulated"]) == 2 and len(result["simulated"]) == 4
    assert result["verdicts"]["identical"] is True
    for cell in result["emulated"] + result["simulated"]:
        assert cell["identical"] is True
        # the ratios are what the cell's own times say
        assert cell["latency_vs_best_sd"] == pytest.approx(cell["tpot_ms"] / cell["best_sd_tpot_ms"])
        assert cell["speedup_vs_target"] == pytest.approx(cell["target_tpot_ms"] / cell["tpot_ms"])
        assert 1 <= cell["best_sd_gamma"] <= 10
    plot = tmp_path / "m.png"
    again = subprocess.run([sys.executable, str(SCRIPT), "--report", str(out), "--plot", str(plot)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == run.stdout
    assert plot.stat().st_size > 0
