"""``wanspec simulate``: flag handling, progress, tables, and the losslessness verdict.

Kept free of torch-heavy imports beyond what the cores need, and of ``quiet_libraries`` (no
transformers here), so the command starts quickly.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wanspec.cli.common import check, check_output, check_plot, write_file
from wanspec.units import describe_link, parse_bandwidth_bps, parse_duration_ms
from wanspec.baselines import BASELINES
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH
from wanspec.simulate.config import MATCH_MODELS, POLICIES, Roofline, SimConfig
from wanspec.simulate.records import lossless
from wanspec.simulate.report import mode_table, plot, sweep_table, write_csv, write_json
from wanspec.simulate.sweep import parse_sweep, run_sweep, swept_names
from wanspec.simulate.trace import read_trace


def parse_policies(text: str) -> tuple[str, ...]:
    policies = POLICIES if text.strip() == "all" else tuple(
        dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    check(bool(policies), "--policy needs at least one policy")
    for p in policies:
        check(p in POLICIES, f"unknown policy {p!r}; choose from {', '.join(POLICIES)} or all")
    return policies


# what only the synthetic acceptance model reads (a trace replays its own)
SYNTHETIC_ONLY = {"alpha", "burst", "separation", "entropy_sd", "prompt_tokens", "rank2", "rank3",
                  "rank4"}


def run_simulate(*, rtt: str, sweep: list[str], jitter: str, bandwidth: str, loss: float,
                 spike: str | None, target_ms: float | None, draft_ms: float | None,
                 verify_per_token_ms: float | None, draft_per_token_ms: float | None,
                 policy: str, gamma: int | None,
                 lookahead: int, entropy_threshold: float, max_slowdown: float, match: str,
                 alpha: float, burst: float, separation: float, entropy_sd: float,
                 trace: Path | None, max_tokens: int, requests: int | None, prompt_tokens: int,
                 seed: int, jobs: int, as_json: bool, csv_path: Path | None,
                 plot_path: Path | None, console: Console, concurrency: str | None = None,
                 request_rate: float | None = None, slo_tpot: str = "50ms",
                 max_batch: int = 64, admission: bool = False,
                 branches: int | None = None,
                 worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH) -> bool:
    """Run the sweep and print/write its records; returns False if any output was not lossless.

    ``branches``: the draft tree's branch lanes (None: the controller's default)."""
    from wanspec.cli.emulate import note_unfilled, parse_loads

    loads = parse_loads(concurrency, request_rate, seed)
    slo_tpot_ms = parse_duration_ms(slo_tpot, "--slo-tpot")
    check(slo_tpot_ms > 0, "--slo-tpot must be > 0")
    check(max_batch >= 1, f"--max-batch must be >= 1, got {max_batch}")
    check(worker_max_batch >= 1, f"--worker-max-batch must be >= 1, got {worker_max_batch}")
    if trace is not None:
        check(match in ("iid", "trace"), f"--trace replays a trace; it cannot be combined with "
                                         f"--match {match}")
        match = "trace"
    check(match in MATCH_MODELS, f"unknown --match {match!r}; choose from {', '.join(MATCH_MODELS)}")
    check(match != "trace" or trace is not None, "--match trace needs --trace FILE")
    check(jobs >= 0, f"--jobs must be >= 0 (0 = automatic), got {jobs}")
    check_output(csv_path, "--csv")
    check_plot(plot_path)
    policies = parse_policies(policy)
    sweeps = [parse_sweep(s) for s in sweep]
    loaded = read_trace(trace) if match == "trace" and trace is not None else None
    swept = set(swept_names(sweeps))
    if loaded is not None:
        idle = sorted(swept & SYNTHETIC_ONLY)
        check(not idle, f"--sweep {', '.join(idle)}: a --trace replays its recorded acceptance, "
                        "so the synthetic model's parameters change nothing")
    check("burst" not in swept or match == "markov", "--sweep burst only applies with --match markov")
    # unset costs and gamma: the trace's recorded values (so a replay matches its emulate run)
    recorded = loaded.header if loaded is not None else {}
    if recorded.get("host_overhead") == "measured":
        Console(stderr=True).print(
            "note: the trace was recorded with --host-overhead measured; the simulator charges "
            "device costs only, so compare its times with plain emulate's", soft_wrap=True)

    def pick(value, name: str, default):  # type: ignore[no-untyped-def]
        return value if value is not None else recorded.get(name, default)

    target_ms, draft_ms = pick(target_ms, "target_ms", 30.0), pick(draft_ms, "draft_ms", 4.0)
    verify_per_token_ms = pick(verify_per_token_ms, "verify_per_token_ms", 0.5)
    draft_per_token_ms = pick(draft_per_token_ms, "draft_per_token_ms", 0.0)
    gamma = pick(gamma, "gamma", 4)
    if requests is None:
        requests = len(loaded.requests) if loaded is not None else 16
    base = SimConfig(
        rtt_ms=parse_duration_ms(rtt, "--rtt"), jitter_ms=parse_duration_ms(jitter, "--jitter"),
        bandwidth_mbit=parse_bandwidth_bps(bandwidth, "--bandwidth") / 1e6, loss=loss,
        spike_ms=None if spike is None else parse_duration_ms(spike, "--spike"),
        target_ms=target_ms, draft_ms=draft_ms, verify_per_token_ms=verify_per_token_ms,
        draft_per_token_ms=draft_per_token_ms, roofline=Roofline.from_header(recorded),
        gamma=gamma, lookahead=lookahead,
        **({} if branches is None else {"branches": branches}),
        entropy_threshold=entropy_threshold, max_slowdown=max_slowdown, match=match,
        alpha=alpha, burst=burst, separation=separation, entropy_sd=entropy_sd,
        max_tokens=max_tokens, requests=requests, prompt_tokens=prompt_tokens, seed=seed)
    if loads:
        note_unfilled(loads, requests, "--requests")
        rtts = None
        if sweeps:
            check(len(sweeps) == 1 and swept_names(sweeps) == ["rtt_ms"],
                  "under load, --sweep may only list RTTs (e.g. --sweep 0,30,150)")
            rtts = [float(v) for v in sweeps[0].values]
        return _run_load(base, loads, policies, rtts=rtts, slo_tpot_ms=slo_tpot_ms,
                         max_batch=max_batch, worker_max_batch=worker_max_batch,
                         admission=admission, trace=loaded,
                         as_json=as_json, csv_path=csv_path, plot_path=plot_path,
                         console=console)
    err = Console(stderr=True)
    t0 = time.perf_counter()
    with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("simulating", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        records = run_sweep(base, sweeps, policies, trace=loaded, jobs=jobs, progress=tick)
    wall = time.perf_counter() - t0
    swept = swept_names(sweeps)
    ok = lossless(records)
    if csv_path:
        write_file(lambda: write_csv(records, csv_path), csv_path)
    if plot_path:
        title = base.describe() + (f"; swept: {', '.join(swept)}" if swept else "")
        write_file(lambda: plot(records, plot_path, swept, policies, title=title), plot_path)
    if as_json:
        print(write_json(records, None))
        return ok
    if not console.is_terminal:
        console = Console(width=170, highlight=False)  # files and pipes: no squeezing
    n_points = len(records) // (len(BASELINES) + len(policies))
    console.print(f"[bold]wanspec simulate[/]: {base.describe()}{_link(base, swept)}; "
                  f"{n_points} point(s) in "
                  f"{wall:.2f} s")
    if n_points == 1:
        console.print(mode_table(records, f"RTT {base.rtt_ms:g} ms" if not swept
                                 else ", ".join(f"{k}={records[0][k]:g}" for k in swept)))
    else:
        console.print(sweep_table(records, swept, policies))
    if ok:
        console.print("[green]Lossless: every request of every mode and point equals the "
                      "synthetic target's own sequence.[/]")
    else:
        bad = sorted({r["mode"] for r in records if not r["identical_to_target_only"]})
        console.print(f"[bold red]LOSSLESSNESS VIOLATED in {', '.join(bad)}[/]")
    return ok


def _link(base: SimConfig, swept: list[str]) -> str:
    """``, link ...``: the header's link settings but those the sweep varies (in the table)."""
    text = describe_link(None if "jitter_ms" in swept else base.jitter_ms,
                         None if "bandwidth_mbit" in swept else base.bandwidth_mbit * 1e6,
                         0.0 if "loss" in swept else base.loss)
    return f", link {text}" if text else ""


def _run_load(base: SimConfig, loads: list, policies: tuple[str, ...], *,
              rtts: list[float] | None, slo_tpot_ms: float, max_batch: int,
              worker_max_batch: int, admission: bool,
              trace, as_json: bool, csv_path: Path | None, plot_path: Path | None,
              console: Console) -> bool:
    from wanspec.cli.emulate import report_load
    from wanspec.core.batcher import BatchLimits
    from wanspec.simulate.load import run_load

    t0 = time.perf_counter()
    records = run_load(base, loads, policies, rtts=rtts, limits=BatchLimits(max_sequences=max_batch),
                       slo_tpot_ms=slo_tpot_ms, admission=admission, trace=trace,
                       worker_max_batch=worker_max_batch)
    header = (f"[bold]wanspec simulate[/] under load: {base.describe()}{_link(base, [])}; "
              f"at most {max_batch} requests per busy pass, {worker_max_batch} sequences per "
              f"worker pass, TPOT SLO {slo_tpot_ms:g} ms"
              f"{' (admission on)' if admission else ''}; {time.perf_counter() - t0:.2f} s")
    return report_load(records, loads, rtts or [base.rtt_ms], header=header, as_json=as_json,
                       csv_path=csv_path, plot_path=plot_path, console=console,
                       plot_title=base.describe())
