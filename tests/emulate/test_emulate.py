"""``wanspec emulate``: records per (RTT, mode), losslessness verdict, CSV and PNG outputs."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
from typer.testing import CliRunner

from helpers import save_tiny_model
from wanspec.baselines import BASELINES, SD_GAMMAS
from wanspec.cli.app import app
from wanspec.emulate.runner import POLICIES, Emulation, EmulationConfig
from wanspec.runtime.engine import TimingConfig
from wanspec.sampling import SamplingParams

REQUIRED_KEYS = {
    "rtt_ms", "mode", "tpot_ms_mean", "tpot_ms_p95", "latency_vs_best_sd",
    "busy_site_draft_passes_per_token", "busy_site_draft_passes_vs_best_sd", "best_sd_gamma",
    "latency_vs_standard_sd", "busy_site_draft_passes_vs_standard_sd",
    "worker_draft_passes_per_token", "identical_to_target_only",
}
PROMPTS = ["To be, or not to be", "whether 'tis nobler in the mind"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, target, near_draft):
    root = tmp_path_factory.mktemp("emulate")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"target": save_tiny_model(target, root / "target"),
            "draft": save_tiny_model(near_draft, root / "draft"),
            "prompts": prompts, "root": root}


def emulate(setup, *args: str):
    r = CliRunner().invoke(app, ["emulate", "--target", str(setup["target"]), "--draft",
                                 str(setup["draft"]), "--prompts", str(setup["prompts"]),
                                 "--max-tokens", "8", *args])
    return r


@pytest.fixture(scope="module")
def sweep(setup):
    """One sweep with every output at once (JSON on stdout, CSV and PNG files)."""
    png, csv_path = setup["root"] / "sweep.png", setup["root"] / "sweep.csv"
    r = emulate(setup, "--sweep", "rtt=0:50:50", "--json", "--plot", str(png), "--csv", str(csv_path))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), png, csv_path


def test_one_record_per_rtt_and_mode(sweep):
    records, _, _ = sweep
    modes = [*BASELINES, *POLICIES]
    assert {"remote", "always", "entropy"} <= set(POLICIES)
    pairs = [(r["rtt_ms"], r["mode"]) for r in records]
    assert len(pairs) == len(set(pairs)) == 2 * len(modes)
    assert set(pairs) == {(rtt, m) for rtt in (0.0, 50.0) for m in modes}


def test_records_have_the_required_keys_and_are_lossless(sweep):
    records, _, _ = sweep
    for r in records:
        assert REQUIRED_KEYS <= set(r), REQUIRED_KEYS - set(r)
        assert r["identical_to_target_only"] is True
        assert r["tokens"] == 8 * len(PROMPTS)
        assert r["tpot_ms_mean"] > 0 and r["tpot_ms_p95"] >= 0
        assert r["busy_site_draft_passes_per_token"] >= 0
        assert r["worker_draft_passes_per_token"] >= 0


def test_baselines_and_ratios(sweep):
    records, _, _ = sweep
    by = {(r["rtt_ms"], r["mode"]): r for r in records}
    for rtt in (0.0, 50.0):
        t, sd, best = by[(rtt, "target")], by[(rtt, "sd")], by[(rtt, "sd-best")]
        # best SD is the fastest window of the search, which includes the configured one
        search = best["sd_search_tpot_ms"]
        assert [int(g) for g in search] == list(SD_GAMMAS)
        assert best["tpot_ms_mean"] == min(search.values()) <= sd["tpot_ms_mean"]
        assert search[str(best["sd_gamma"])] == best["tpot_ms_mean"]
        assert sd["sd_gamma"] == 4 and search["4"] == sd["tpot_ms_mean"]
        assert best["latency_vs_best_sd"] == pytest.approx(1.0)
        assert t["busy_site_draft_passes_per_token"] == 0
        assert t["worker_draft_passes_per_token"] == 0 and sd["worker_draft_passes_per_token"] == 0
        assert sd["latency_vs_standard_sd"] == pytest.approx(1.0)
        assert sd["busy_site_draft_passes_vs_standard_sd"] == pytest.approx(1.0)
        remote = by[(rtt, "remote")]
        assert remote["busy_site_draft_passes_per_token"] == 0
        assert remote["busy_site_draft_passes_vs_standard_sd"] == pytest.approx(0.0)
        assert remote["worker_draft_passes_per_token"] > 0
        for m in POLICIES:
            r = by[(rtt, m)]
            assert r["latency_vs_standard_sd"] == pytest.approx(
                r["tpot_ms_mean"] / sd["tpot_ms_mean"])
            assert r["latency_vs_best_sd"] == pytest.approx(
                r["tpot_ms_mean"] / best["tpot_ms_mean"])
            assert r["best_sd_gamma"] == best["sd_gamma"]
    # baselines do not depend on the RTT
    for m in BASELINES:
        a, b = by[(0.0, m)], by[(50.0, m)]
        assert a["tpot_ms_mean"] == b["tpot_ms_mean"]


def test_plot_is_a_png(sweep):
    _, png, _ = sweep
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_has_one_row_per_record(sweep):
    records, _, path = sweep
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    assert REQUIRED_KEYS <= set(rows[0])
    assert [(float(r["rtt_ms"]), r["mode"]) for r in rows] == [
        (r["rtt_ms"], r["mode"]) for r in records]
    assert all(r["identical_to_target_only"] == "True" for r in rows)


def test_policy_subset_and_single_rtt(setup):
    r = emulate(setup, "--rtt", "30ms", "--policy", "remote,entropy", "--json",
                "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--jitter", "5ms",
                "--sd-gammas", "2,6")
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert [(x["rtt_ms"], x["mode"]) for x in records] == [
        (30.0, m) for m in (*BASELINES, "remote", "entropy")]
    best = records[2]
    assert list(best["sd_search_tpot_ms"]) == ["2", "4", "6"]  # the list, and --gamma
    assert all(x["identical_to_target_only"] for x in records)


def test_tables_report_losslessness(setup):
    r = emulate(setup, "--rtt", "20", "--policy", "always", "--jitter", "2ms",
                "--bandwidth", "12.5MB/s")
    assert r.exit_code == 0, r.output
    assert "token-identical to target-only" in " ".join(r.stdout.split())
    assert "jitter 2 ms, bandwidth 100 Mbit/s" in " ".join(r.stdout.split())  # bytes are bytes


@pytest.mark.parametrize("args,needle", [
    (["--sweep", "0,abc"], "invalid --sweep"),
    (["--sweep", "-5"], "rtt must be >= 0"),
    (["--sweep", "jitter=0,5"], "emulate sweeps the RTT only"),
    (["--bandwidth", "lots"], "invalid --bandwidth 'lots'"),
    (["--bandwidth", "100bit/s"], "--bandwidth must be 0 (unlimited) or between 1 kbit/s"),
    (["--jitter", "-1ms"], "--jitter must be between 0 and 100 s"),
    (["--policy", "bogus"], "unknown policy"),
    (["--loss", "2"], "--loss must be between 0 and 1"),
    (["--gamma", "0"], "--gamma must be >= 1"),
    (["--sd-gammas", "0-3"], "windows must be between 1 and 64"),
    (["--sd-gammas", "a,b"], "invalid --sd-gammas"),
    (["--max-slowdown", "0.9"], "--max-slowdown must be >= 1"),
    (["--host-overhead", "some"], "--host-overhead must be 0 or measured"),
    (["--measured", "--host-overhead", "measured"], "--measured already pays it"),
    (["--host-transport", "udp"], "--host-transport must be one of inproc, tcp, quic"),
    (["--host-transport", "quic"], "it needs --host-overhead measured"),
    (["--host-transport", "TCP"], "it needs --host-overhead measured"),  # a name: any case
])
def test_bad_values(args, needle, setup):
    r = emulate(setup, *args)
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.stderr.split())
    assert "Traceback" not in r.output


def test_emulation_class_directly(target, random_draft):
    """The runner with a poor drafter, sampling and a lossy, jittery link: still identical."""
    cfg = EmulationConfig(rtts_ms=(80.0,), jitter_ms=20.0, spike_prob=0.2, spike_ms=80.0,
                          bandwidth_bps=1e6, timing=TimingConfig.emulate(30, 4, 0.5),
                          policies=POLICIES, max_tokens=10,
                          sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=4))
    seen: list[str] = []
    emu = Emulation(target, random_draft, cfg, progress=seen.append)
    records = emu.run(PROMPTS)
    assert len(records) == len(BASELINES) + len(POLICIES)
    assert all(r["identical_to_target_only"] for r in records)
    assert len(seen) == emu.total_requests(len(PROMPTS))


def test_charging_measured_host_overhead_slows_the_clock_and_loses_nothing(target, near_draft):
    """--host-overhead measured: the loop's own work and the real compute of passes slower than
    their cost go on the virtual clock; outputs stay identical to target-only."""
    def run(host_overhead: bool) -> dict:
        timing = TimingConfig.emulate(2, 0.5)  # costs below this CPU's real compute
        cfg = EmulationConfig(rtts_ms=(20.0,), policies=("adaptive",), max_tokens=8,
                              timing=dataclasses.replace(timing, host_overhead=host_overhead),
                              sd_gammas=(4,))
        return {r["mode"]: r for r in Emulation(target, near_draft, cfg).run(PROMPTS[:1])}

    free, charged = run(False), run(True)
    for mode in ("target", "adaptive"):
        assert free[mode]["identical_to_target_only"] and charged[mode]["identical_to_target_only"]
        assert charged[mode]["e2e_ms_per_token"] > free[mode]["e2e_ms_per_token"]
    assert free["target"]["tpot_ms_mean"] == pytest.approx(2.0)  # deterministic: the cost


def test_a_transport_stacks_host_work_slows_the_remote_path_only(target, near_draft):
    """--host-transport: each message costs both sites the stack's share (here a heavy 50 ms
    at each end, far above this machine's noise): the remote path slows by at least half of one
    end's share a token (a verification round carries a few tokens and two messages), and outputs
    stay identical."""
    def run(stack_ms: float) -> dict:
        timing = dataclasses.replace(TimingConfig.emulate(30, 4), host_overhead=True)
        cfg = EmulationConfig(rtts_ms=(0.0,), policies=("remote",), max_tokens=8, timing=timing,
                              sd_gammas=(4,), host_stack_ms=stack_ms)
        return {r["mode"]: r for r in Emulation(target, near_draft, cfg).run(PROMPTS[:1])}

    bare, stacked = run(0.0), run(50.0)
    assert all(r["identical_to_target_only"] for r in (*bare.values(), *stacked.values()))
    assert stacked["remote"]["e2e_ms_per_token"] > bare["remote"]["e2e_ms_per_token"] + 25
    # every record says what host work its times include
    assert {(r["host_overhead"], r["host_stack_ms"]) for r in stacked.values()} == {
        ("measured", 50.0)}
    assert {(r["host_overhead"], r["host_stack_ms"]) for r in bare.values()} == {("measured", 0.0)}


def test_host_overhead_is_for_emulated_costs_only():
    from wanspec.errors import WanspecError

    with pytest.raises(WanspecError, match="emulated costs only"):
        TimingConfig(host_overhead=True)
    charged = dataclasses.replace(TimingConfig.emulate(30, 4), host_overhead=True)
    assert "host overhead measured" in charged.describe()


def test_records_say_what_host_work_their_times_include(target, near_draft):
    def fields(timing):
        return Emulation(target, near_draft, EmulationConfig(timing=timing)).host_fields()

    assert fields(TimingConfig.emulate(30, 4))["host_overhead"] == "0"
    charged = dataclasses.replace(TimingConfig.emulate(30, 4), host_overhead=True)
    assert fields(charged)["host_overhead"] == "measured"
    assert fields(TimingConfig())["host_overhead"] == "real"  # --measured: real time, all of it
