"""``wanspec emulate --concurrency / --request-rate``: serving under load, records and outputs."""

from __future__ import annotations

import asyncio
import csv
import json

import pytest
from typer.testing import CliRunner

from helpers import save_tiny_model
from wanspec.cli.app import app
from wanspec.emulate.load import Closed, Poisson, serve, summarize, LoadRun, Served
from wanspec.emulate.report import LOAD_COLUMNS
from wanspec.emulate.runner import Emulation, EmulationConfig
from wanspec.errors import WanspecError
from wanspec.runtime.engine import GenerationResult, TimingConfig
from wanspec.timing import clock
from wanspec.timing.device import DeviceStats

PROMPTS = ["To be, or not to be", "whether 'tis nobler in the mind", "to suffer the slings",
           "and arrows of outrageous fortune"]


def fake_result(tokens: int, ttft: float, wall: float, drafts: int = 0) -> GenerationResult:
    return GenerationResult(text="", token_ids=list(range(tokens)), prompt_tokens=3,
                            finish_reason="length", mode="x",
                            metrics={"committed_tokens": tokens, "ttft_s": ttft, "wall_s": wall,
                                     "draft_passes": {"controller": drafts, "worker": 0}})


# ---- arrivals -----------------------------------------------------------------------------------

def test_a_closed_loop_never_has_more_than_its_clients_in_flight_and_keeps_prompt_order():
    in_flight, peak = 0, 0

    async def generate(p: str) -> GenerationResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01 * (len(p) % 3 + 1))
        in_flight -= 1
        return fake_result(2, 0.001, 0.01)

    async def main():
        return await serve(generate, [f"p{'x' * i}" for i in range(7)], Closed(3))

    served, span = clock.run(main, virtual=True)
    assert peak == 3 and len(served) == 7
    assert span == pytest.approx(max(s.finished for s in served))
    # a client sends its next prompt when its last one finished: nobody waits for nothing
    assert sorted(s.arrived for s in served)[:3] == [0.0, 0.0, 0.0]


def test_poisson_arrivals_are_seeded_and_have_the_asked_rate():
    a = Poisson(20.0, seed=3).arrivals(4000)
    assert a == Poisson(20.0, seed=3).arrivals(4000) != Poisson(20.0, seed=4).arrivals(4000)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:]))
    assert 4000 / a[-1] == pytest.approx(20.0, rel=0.05)


def test_an_open_loop_starts_each_request_at_its_arrival_whatever_is_in_flight():
    async def generate(p: str) -> GenerationResult:
        await asyncio.sleep(1.0)  # far slower than the arrivals: they pile up, none is refused
        return fake_result(2, 0.5, 1.0)

    load = Poisson(50.0, seed=1)

    async def main():
        return await serve(generate, PROMPTS, load)

    served, _ = clock.run(main, virtual=True)
    assert [s.arrived for s in served] == pytest.approx(load.arrivals(len(PROMPTS)))
    assert all(s.finished == pytest.approx(s.arrived + 1.0) for s in served)


@pytest.mark.parametrize("bad", [lambda: Closed(0), lambda: Poisson(0.0), lambda: Poisson(-1)])
def test_bad_loads_are_refused(bad):
    with pytest.raises(WanspecError):
        bad()


# ---- the record -----------------------------------------------------------------------------------

def test_summary_throughput_goodput_percentiles_and_accelerator_split():
    served = [Served(fake_result(11, 0.1, 0.1 + 10 * 0.02), 0.0, 0.3),  # TPOT 20 ms
              Served(fake_result(11, 0.2, 0.2 + 10 * 0.08, drafts=4), 0.0, 1.0)]  # TPOT 80 ms
    busy = DeviceStats(passes=10, sequences=25, busy_s=0.8,
                       busy_by_model={"target": 0.6, "local-draft": 0.2})
    run = LoadRun("adaptive", Closed(2), 30.0, served, 1.0, busy,
                  DeviceStats(passes=4, sequences=8, busy_s=0.5))
    rec = summarize(run, [list(range(11)), list(range(11))], slo_tpot_ms=50.0)
    assert rec["throughput_tok_s"] == pytest.approx(22.0)
    assert rec["goodput_tok_s"] == pytest.approx(11.0) and rec["slo_attained"] == 0.5
    assert rec["tpot_ms_p50"] == pytest.approx(50.0) and rec["tpot_ms_p99"] == pytest.approx(79.4)
    assert (rec["busy_target_frac"], rec["busy_draft_frac"]) == pytest.approx((0.6, 0.2))
    assert rec["busy_idle_frac"] == pytest.approx(0.2)
    assert rec["busy_mean_batch"] == 2.5 and rec["worker_mean_batch"] == 2.0
    assert rec["worker_utilisation"] == pytest.approx(0.5)
    assert rec["busy_site_draft_passes_per_token"] == pytest.approx(4 / 22)
    assert rec["identical_to_target_only"] is True
    assert summarize(run, [list(range(11)), [0]], 50.0)["identical_to_target_only"] is False


# ---- end to end ---------------------------------------------------------------------------------

def test_every_mode_under_load_is_identical_to_decoding_alone(target, near_draft):
    cfg = EmulationConfig(rtts_ms=(30.0,), timing=TimingConfig.emulate(30, 4, 0.5),
                          policies=("remote", "adaptive"), max_tokens=8, sd_gammas=(2, 4))
    seen: list[str] = []
    emu = Emulation(target, near_draft, cfg, progress=seen.append)
    records = emu.run_load(PROMPTS, [Closed(1), Closed(4)])
    modes = ["target", "sd-best", "sd", "remote", "adaptive"]
    assert [(r["load"], r["mode"]) for r in records] == [(c, m) for c in ("c=1", "c=4")
                                                          for m in modes]
    assert all(r["identical_to_target_only"] for r in records)
    assert len(seen) == emu.total_load_requests(len(PROMPTS), 2)
    by = {(r["load"], r["mode"]): r for r in records}
    assert by["c=1", "target"]["busy_mean_batch"] == 1.0
    assert by["c=4", "target"]["busy_mean_batch"] > 2.0  # four clients share passes
    # target-only is memory-bound at this size: four clients get ~4x one client's throughput
    assert by["c=4", "target"]["throughput_tok_s"] > 3 * by["c=1", "target"]["throughput_tok_s"]
    for r in records:
        assert r["throughput_vs_target"] == pytest.approx(
            r["throughput_tok_s"] / by[r["load"], "target"]["throughput_tok_s"])
    best = by["c=4", "sd-best"]
    assert best["sd_gamma"] in (2, 4)
    assert best["throughput_tok_s"] == max(best["sd_search_throughput"].values())


@pytest.fixture(scope="module")
def setup(tmp_path_factory, target, near_draft):
    root = tmp_path_factory.mktemp("load")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"target": save_tiny_model(target, root / "target"),
            "draft": save_tiny_model(near_draft, root / "draft"), "prompts": prompts,
            "root": root}


def emulate(setup, *args: str):
    return CliRunner().invoke(app, ["emulate", "--target", str(setup["target"]), "--draft",
                                    str(setup["draft"]), "--prompts", str(setup["prompts"]),
                                    "--max-tokens", "6", "--sd-gammas", "2,4", *args])


def test_cli_under_load_writes_json_csv_and_plot(setup):
    png, csv_path = setup["root"] / "load.png", setup["root"] / "load.csv"
    r = emulate(setup, "--concurrency", "1,2", "--request-rate", "40", "--policy", "adaptive",
                "--rtt", "30ms", "--slo-tpot", "40ms", "--json", "--csv", str(csv_path),
                "--plot", str(png))
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert {rec["load"] for rec in records} == {"c=1", "c=2", "40 req/s"}
    assert all(rec["slo_tpot_ms"] == 40.0 and rec["identical_to_target_only"] for rec in records)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) and list(rows[0]) == LOAD_COLUMNS


def test_cli_under_load_prints_tables_and_the_verdict(setup):
    r = emulate(setup, "--concurrency", "2", "--policy", "remote")
    assert r.exit_code == 0, r.output
    assert "c=2, RTT 40 ms" in r.stdout and "Lossless" in r.stdout and "tok/s" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--concurrency", "0"], "client counts must be >= 1"),
    (["--concurrency", "a,b"], "invalid --concurrency"),
    (["--request-rate", "0"], "--request-rate must be > 0"),
    (["--concurrency", "2", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["--concurrency", "2", "--slo-tpot", "fast"], "invalid --slo-tpot"),
    (["--concurrency", "2", "--record", "x.jsonl"], "--record records one request at a time"),
])
def test_bad_load_values_get_one_line_errors(args, needle, setup):
    r = emulate(setup, *args)
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.stderr.split())
    assert "Traceback" not in r.output


def test_a_failing_request_stops_the_run_instead_of_leaving_the_others_running():
    started: list[str] = []

    async def generate(p: str) -> GenerationResult:
        started.append(p)
        if p == PROMPTS[1]:
            raise RuntimeError("boom")
        await asyncio.sleep(10.0)
        return fake_result(2, 0.1, 1.0)

    async def main():
        return await serve(generate, PROMPTS, Closed(4))

    with pytest.raises(ExceptionGroup):
        clock.run(main, virtual=True)
    assert len(started) == 4  # the others had started and were cancelled, not awaited for 10 s
