"""``wanspec emulate``: flag handling, progress, tables, and the losslessness verdict."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wanspec.cli.common import check, check_output, check_plot, configure_threads, write_file
from wanspec.cli.loading import load_models
from wanspec.units import describe_link, parse_bandwidth_bps, parse_duration_ms
from wanspec.emulate.prompts import load_prompts
from wanspec.core.batcher import BatchLimits
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH
from wanspec.emulate.load import Closed, Load, Poisson
from wanspec.emulate.report import (
    LOAD_COLUMNS,
    load_table,
    plot,
    plot_load,
    rtt_table,
    write_csv,
    write_json,
)
from wanspec.emulate.runner import POLICIES, Emulation, EmulationConfig
from wanspec.errors import WanspecError
from wanspec.runtime.engine import TimingConfig
from wanspec.sampling import SamplingParams
from wanspec.simulate.config import PARAMS, check_value
from wanspec.simulate.trace import Trace, write_trace
from wanspec.timing.device import DEFAULT_DRAFT_COST
from wanspec.transport.stack_cost import TRANSPORTS
from wanspec.transport.stack_cost import measure as measure_stack


def parse_rtt_sweep(text: str) -> tuple[float, ...]:
    """``--sweep`` in ``wanspec simulate``'s syntax (``0,10,20``, ``rtt=0:150:10``, units
    allowed); the emulator sweeps the RTT only."""
    from wanspec.simulate.sweep import parse_sweep

    swept = parse_sweep(text)
    check(swept.param.name == "rtt", f"invalid --sweep {text!r}: emulate sweeps the RTT only "
                                     "(e.g. 0,10,20 or rtt=0:150:10); wanspec simulate sweeps "
                                     f"{swept.param.name}")
    return tuple(float(v) for v in swept.values)


def parse_gammas(text: str) -> tuple[int, ...]:
    """``1-10`` or ``2,4,6``: the windows best SD is searched over."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            check(lo <= hi, f"invalid --sd-gammas {text!r}: a range runs from low to high")
            values = tuple(range(lo, hi + 1))
        else:
            values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise WanspecError(f"invalid --sd-gammas {text!r}: use a range like 1-10 or a list like "
                           "2,4,6") from None
    check(bool(values) and all(1 <= v <= 64 for v in values),
          f"invalid --sd-gammas {text!r}: windows must be between 1 and 64")
    return values


def note_unfilled(loads: Sequence[Load], requests: int, remedy: str) -> None:
    """Say so when a closed loop has more clients than requests to send: the table is labelled
    with the client count, but no more than ``requests`` are ever in flight."""
    over = [load.concurrency for load in loads
            if isinstance(load, Closed) and load.concurrency > requests]
    if over:
        Console(stderr=True).print(
            f"note: --concurrency {','.join(map(str, over))} with {requests} requests: at most "
            f"{requests} are ever in flight (give {remedy})", soft_wrap=True)


def parse_loads(concurrency: str | None, request_rate: float | None, seed: int) -> list[Load]:
    """``--concurrency 1,8,32`` and ``--request-rate R`` -> the loads to serve, in that order."""
    loads: list[Load] = []
    if concurrency is not None:
        try:
            levels = [int(v) for v in concurrency.split(",")]
        except ValueError:
            raise WanspecError(f"invalid --concurrency {concurrency!r}: use comma-separated "
                               "client counts, e.g. 1,8,32,64") from None
        check(bool(levels) and all(v >= 1 for v in levels),
              f"invalid --concurrency {concurrency!r}: client counts must be >= 1")
        loads += [Closed(v) for v in levels]
    if request_rate is not None:
        check(math.isfinite(request_rate) and request_rate > 0,
              f"--request-rate must be > 0 requests/s, got {request_rate}")
        loads.append(Poisson(request_rate, seed))
    return loads


def _timing_text(cfg: EmulationConfig) -> str:
    """The device timing as report headers state it, with the transport stack's host work when
    it is charged (``--host-transport``)."""
    text = cfg.timing.describe()
    if cfg.host_stack_ms:
        text += f" + {cfg.host_stack_ms * 1e3:.0f} us of transport stack a message an end"
    return text


def _run_load(emu: Emulation, prompts: list[str], loads: list[Load], *, as_json: bool,
              csv_path: Path | None, plot_path: Path | None, console: Console) -> bool:
    cfg = emu.config
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=as_json and not err.is_terminal) as progress:
        task = progress.add_task("emulating under load",
                                 total=emu.total_load_requests(len(prompts), len(loads)))
        emu.progress = lambda label: progress.update(task, advance=1, description=label)
        records = emu.run_load(prompts, loads)
    header = (f"[bold]wanspec emulate[/] under load: {len(prompts)} prompts x "
              f"{cfg.max_tokens} tokens, timing {_timing_text(cfg)}, link "
              f"{describe_link(cfg.jitter_ms, cfg.bandwidth_bps, cfg.spike_prob)}, at most "
              f"{cfg.limits.max_sequences} requests per busy pass, {cfg.worker_max_batch} sequences "
              f"per worker pass, TPOT SLO {cfg.slo_tpot_ms:g} ms"
              f"{' (admission on)' if cfg.admission else ''}")
    return report_load(records, loads, cfg.rtts_ms, header=header, as_json=as_json,
                       csv_path=csv_path, plot_path=plot_path, console=console,
                       plot_title=f"{_timing_text(cfg)}, {len(prompts)} prompts x "
                                  f"{cfg.max_tokens} tokens")


def report_load(records: list[dict], loads: list[Load], rtts: Sequence[float], *, header: str,
                as_json: bool, csv_path: Path | None, plot_path: Path | None,
                console: Console, plot_title: str) -> bool:
    """What ``emulate`` and ``simulate`` under load print and write (the records are the same
    kind); returns False if any output differed from the request decoded alone."""
    identical = all(r["identical_to_target_only"] for r in records)
    if csv_path:
        write_file(lambda: write_csv(records, csv_path, LOAD_COLUMNS), csv_path)
    if plot_path:
        write_file(lambda: plot_load(records, plot_path, title=plot_title), plot_path)
    if as_json:
        print(write_json(records, None))
        return identical
    if not console.is_terminal:
        console = Console(width=170, highlight=False)
    console.print(header)
    for load in loads:
        for rtt in rtts:
            console.print(load_table(records, load.label, rtt))
    if identical:
        console.print("[green]Lossless: every mode, load and RTT: output token-identical to the "
                      "same request decoded alone.[/]")
    else:
        bad = sorted({f"{r['mode']}@{r['load']},{r['rtt_ms']:g}ms" for r in records
                      if not r["identical_to_target_only"]})
        console.print(f"[bold red]LOSSLESSNESS VIOLATED: outputs differ in {', '.join(bad)}[/]")
    return identical


def run_emulate(*, rtt: str, sweep: str | None, jitter: str, bandwidth: str, loss: float,
                target_ms: float, draft_ms: float, verify_per_token_ms: float, measured: bool,
                policy: str, gamma: int, entropy_threshold: float, max_slowdown: float, prompts: Path | None,
                num_prompts: int | None, max_tokens: int, temperature: float, top_p: float,
                top_k: int, seed: int, target: Path | None, draft: Path | None,
                threads: int | None, as_json: bool, csv_path: Path | None,
                plot_path: Path | None, console: Console, record: Path | None = None,
                sd_gammas: str = "1-10", exact: bool = False, concurrency: str | None = None,
                request_rate: float | None = None, slo_tpot: str = "50ms",
                max_batch: int = 64, admission: bool = False,
                worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH,
                compute_ms_per_token: float = 0.0, kv_ms_per_ktoken: float = 0.0,
                per_sequence_ms: float = 0.0, branches: int = ControllerConfig.branches,
                host_overhead: str = "0", host_transport: str = "inproc") -> bool:
    """Run the comparison; returns False if any output differed from target-only."""
    rtts = parse_rtt_sweep(sweep) if sweep else (parse_duration_ms(rtt, "--rtt"),)
    loads = parse_loads(concurrency, request_rate, seed)
    slo_tpot_ms = parse_duration_ms(slo_tpot, "--slo-tpot")
    check(slo_tpot_ms > 0, "--slo-tpot must be > 0")
    check(max_batch >= 1, f"--max-batch must be >= 1, got {max_batch}")
    check(worker_max_batch >= 1, f"--worker-max-batch must be >= 1, got {worker_max_batch}")
    check(not (loads and record), "--record records one request at a time; drop --concurrency "
                                  "and --request-rate to record a trace")
    check(gamma >= 1, f"--gamma must be >= 1, got {gamma}")
    check(branches >= 0, f"--branches must be >= 0, got {branches}")
    check(max_tokens >= 1, f"--max-tokens must be >= 1, got {max_tokens}")
    check(0.0 <= loss <= 1.0, f"--loss must be between 0 and 1, got {loss}")
    check(max_slowdown >= 1.0, f"--max-slowdown must be >= 1, got {max_slowdown}")
    check_value(PARAMS["entropy_threshold"], entropy_threshold)  # simulate's range, one rule
    gammas = parse_gammas(sd_gammas)
    jitter_ms = parse_duration_ms(jitter, "--jitter")
    bandwidth_bps = parse_bandwidth_bps(bandwidth, "--bandwidth")
    policies = POLICIES if policy == "all" else tuple(p.strip() for p in policy.split(","))
    for p in policies:
        check(p in POLICIES, f"unknown policy {p!r}; choose from {', '.join(POLICIES)} or all")
    host_overhead = host_overhead.strip().lower()
    check(host_overhead in ("0", "measured"),
          f"--host-overhead must be 0 or measured, got {host_overhead!r}")
    check(not (measured and host_overhead == "measured"),
          "--host-overhead measured charges host work to emulated costs; --measured already "
          "pays it for real")
    host_transport = host_transport.strip().lower()  # a name: TCP is tcp
    check(host_transport in TRANSPORTS,
          f"--host-transport must be one of {', '.join(TRANSPORTS)}, got {host_transport!r}")
    check(host_transport == "inproc" or host_overhead == "measured",
          "--host-transport charges a transport's host work; it needs --host-overhead measured")
    check(min(target_ms, draft_ms, verify_per_token_ms, compute_ms_per_token,
              kv_ms_per_ktoken, per_sequence_ms) >= 0, "device costs must be >= 0 ms")
    timing = TimingConfig() if measured else TimingConfig.emulate(
        target_ms, draft_ms, verify_per_token_ms, compute_ms_per_token=compute_ms_per_token,
        kv_ms_per_ktoken=kv_ms_per_ktoken, per_sequence_ms=per_sequence_ms,
        draft_compute_ms_per_token=DEFAULT_DRAFT_COST.compute_ms_per_token,
        draft_kv_ms_per_ktoken=DEFAULT_DRAFT_COST.kv_ms_per_ktoken,
        draft_per_sequence_ms=DEFAULT_DRAFT_COST.per_sequence_ms)
    if host_overhead == "measured":
        timing = dataclasses.replace(timing, host_overhead=True)
    cfg = EmulationConfig(
        rtts_ms=rtts, jitter_ms=jitter_ms, bandwidth_bps=bandwidth_bps, spike_prob=loss,
        spike_ms=max(rtts) if loss else 0.0, timing=timing, policies=policies, gamma=gamma,
        branches=branches,
        max_tokens=max_tokens, entropy_threshold=entropy_threshold,
        max_slowdown=max_slowdown,
        sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
        seed=seed, sd_gammas=gammas, limits=BatchLimits(max_sequences=max_batch),
        worker_max_batch=worker_max_batch, slo_tpot_ms=slo_tpot_ms, admission=admission)
    for path, flag in ((record, "--record"), (csv_path, "--csv")):
        check_output(path, flag)  # fail before minutes of emulation, not after
    check_plot(plot_path)
    prompt_list = load_prompts(prompts, num_prompts)
    check(num_prompts is None or len(prompt_list) == num_prompts,
          f"--num-prompts {num_prompts}: the prompts file holds only {len(prompt_list)}")
    note_unfilled(loads, len(prompt_list), "--prompts FILE with more")
    if host_transport != "inproc":  # before the models load: a second on loopback
        stack = measure_stack(host_transport)
        cfg = dataclasses.replace(cfg, host_stack_ms=stack.per_side_ms)
        Console(stderr=True).print(
            f"{host_transport} stack on this machine: {stack.per_side_ms * 1e3:.0f} us of host "
            f"work a message at each end, charged to both sites" if stack.per_side_ms else
            f"{host_transport} stack on this machine: no more host work than the in-process "
            f"link's own (nothing more charged)")
    configure_threads(threads)
    tgt, drf = load_models(target, draft, need_draft=True, exact=exact)
    assert drf is not None
    emu = Emulation(tgt, drf, cfg)
    if loads:
        return _run_load(emu, prompt_list, loads, as_json=as_json, csv_path=csv_path,
                         plot_path=plot_path, console=console)
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=as_json and not err.is_terminal) as progress:
        task = progress.add_task("emulating", total=emu.total_requests(len(prompt_list)))

        def tick(label: str) -> None:
            progress.update(task, advance=1, description=label)

        emu.progress = tick
        records = emu.run(prompt_list)

    identical = all(r["identical_to_target_only"] for r in records)
    if record:
        header, trace = emu.trace()
        try:
            write_trace(record, trace, header)
        except OSError as exc:
            raise WanspecError(f"cannot write {record}: {exc.strerror or exc}") from None
        alpha = Trace(trace).alpha
        Console(stderr=True).print(
            f"recorded {len(trace)} requests to {record} (draft per-token acceptance "
            f"{alpha if alpha is not None else 0:.3f}); replay: wanspec simulate --trace {record}")
    if csv_path:
        write_csv(records, csv_path)
    if plot_path:
        plot(records, plot_path, title=f"{_timing_text(cfg)}, gamma={gamma}, "
                                       f"{len(prompt_list)} prompts x {max_tokens} tokens")
    if as_json:
        print(write_json(records, None))
    else:
        if not console.is_terminal:
            console = Console(width=170, highlight=False)  # files and pipes: no squeezing
        best = next(r for r in records if r["mode"] == "sd-best")
        console.print(f"[bold]wanspec emulate[/]: {len(prompt_list)} prompts x {max_tokens} tokens, "
                      f"gamma={gamma}, timing {_timing_text(cfg)}, link "
                      f"{describe_link(cfg.jitter_ms, cfg.bandwidth_bps, cfg.spike_prob)}; "
                      f"best SD: window {best['sd_gamma']} of {min(gammas)}-{max(gammas)}")
        for r in rtts:
            console.print(rtt_table(records, r))
        if identical:
            console.print(f"[green]Lossless: all {len(prompt_list)} prompts, every mode and RTT: "
                          "output token-identical to target-only decoding.[/]")
        else:
            bad = sorted({f"{r['mode']}@{r['rtt_ms']:g}ms" for r in records
                          if not r["identical_to_target_only"]})
            console.print(f"[bold red]LOSSLESSNESS VIOLATED: outputs differ from target-only in "
                          f"{', '.join(bad)}[/]")
    return identical
