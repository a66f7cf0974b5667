"""``wanspec bench`` and ``wanspec probe``: flag checks, progress, tables, JSON.

Every flag is checked (and the prompts file read) before the first network call, so a typo costs
a one-line error, not a half-run benchmark.  No torch or transformers import here: both commands
start in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from wanspec.bench.openai import RequestRecord, resolve_endpoint
from wanspec.bench.probe import ProbeConfig, check_probe_config, parse_target, run_probe
from wanspec.bench.report import (
    error_notes,
    errors_table,
    latency_table,
    probe_table,
    recommendation_notes,
    throughput_table,
)
from wanspec.bench.runner import BenchConfig, request_prompts, run_bench, summarize
from wanspec.cli.common import check
from wanspec.transport.tls import check_client_trust, client_ssl_context
from wanspec.units import parse_duration_ms
from wanspec.emulate.load import Closed, Load, Poisson
from wanspec.emulate.prompts import load_prompts
from wanspec.timing import clock


def _slo_ms(text: str | None, flag: str) -> float | None:
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    ms = parse_duration_ms(text, flag)
    check(ms > 0, f"{flag} must be > 0 (or 'none'), got {text!r}")
    return ms


def bench_config(*, url: str, chat: bool, concurrency: int | None, request_rate: float | None,
                 prompts: Path | None, num_prompts: int | None, max_tokens: int,
                 model: str | None, api_key: str | None, seed: int, temperature: float,
                 ignore_eos: bool, timeout: float, slo_tpot: str | None,
                 slo_ttft: str | None) -> BenchConfig:
    """Every flag checked, the prompts read: what ``run_bench`` needs, or a one-line error."""
    endpoint = resolve_endpoint(url, chat)
    check(concurrency is None or request_rate is None,
          "give --concurrency or --request-rate, not both")
    load: Load
    if request_rate is not None:
        check(math.isfinite(request_rate) and request_rate > 0,
              f"--request-rate must be > 0 requests/s, got {request_rate:g}")
        load = Poisson(request_rate, seed)
    else:
        check(concurrency is None or concurrency >= 1,
              f"--concurrency must be >= 1, got {concurrency}")
        load = Closed(concurrency or 1)
    check(num_prompts is None or num_prompts >= 1, f"--num-prompts must be >= 1, got {num_prompts}")
    check(max_tokens >= 1, f"--max-tokens must be >= 1, got {max_tokens}")
    check(math.isfinite(temperature) and temperature >= 0,
          f"--temperature must be >= 0, got {temperature:g}")
    check(math.isfinite(timeout) and timeout > 0, f"--timeout must be > 0 s, got {timeout:g}")
    check(model is None or bool(model.strip()), "--model must not be empty")
    slo_tpot_ms, slo_ttft_ms = _slo_ms(slo_tpot, "--slo-tpot"), _slo_ms(slo_ttft, "--slo-ttft")
    return BenchConfig(endpoint=endpoint, prompts=request_prompts(load_prompts(prompts),
                                                                  num_prompts),
                       load=load, max_tokens=max_tokens, model=model, temperature=temperature,
                       seed=seed, ignore_eos=ignore_eos, timeout_s=timeout,
                       api_key=api_key or None, slo_tpot_ms=slo_tpot_ms, slo_ttft_ms=slo_ttft_ms)


def run_bench_cli(cfg: BenchConfig, *, as_json: bool, console: Console) -> bool:
    """Run the load and print it; returns False if no request completed."""
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task(f"bench {cfg.load.label}", total=len(cfg.prompts))

        def tick(rec: RequestRecord) -> None:
            progress.update(task, advance=1)

        run = clock.run(lambda: run_bench(cfg, tick))
    summary = summarize(run)
    if as_json:
        print(json.dumps({**summary, "requests_detail": [r.to_dict() for r in run.records]}))
        return summary["completed"] > 0
    console.print(f"[bold]wanspec bench[/] {escape(summary['url'])} (model "
                  f"{escape(summary['model'])}): "
                  f"{summary['requests']} requests x <= {cfg.max_tokens} tokens, "
                  f"{'closed loop ' if isinstance(cfg.load, Closed) else 'Poisson '}"
                  f"{cfg.load.label}", soft_wrap=True)
    console.print(latency_table(summary))
    console.print(throughput_table(summary))
    errors = errors_table(summary)
    if errors is not None:
        console.print(errors)
        for line in error_notes(summary):
            console.print(line, markup=False, highlight=False)
    return summary["completed"] > 0


def probe_config(*, targets: list[str], transport: str, chat: bool, count: int, interval: str,
                 timeout: float, ca: Path | None, insecure: bool, model: str | None,
                 cert: Path | None = None, key: Path | None = None,
                 api_key: str | None, max_tokens: int, prompt: str, max_slowdown: float,
                 min_saving: float) -> tuple[list[Any], ProbeConfig]:
    """The targets and settings, every flag checked before any network call."""
    check(bool(targets), "give at least one target (HOST:PORT or http(s)://URL)")
    parsed = [parse_target(t, transport, chat) for t in targets]
    no_urls = all(t.endpoint is None for t in parsed)
    for flag, value in (("--chat", chat or None), ("--model", model)):
        check(not (no_urls and value is not None), f"{flag} applies to http(s):// targets only")
    check_client_trust(ca, insecure, cert, key)  # first: --ca with --insecure is refused as such
    for flag, value in (("--ca", ca), ("--insecure", insecure or None), ("--cert", cert),
                        ("--key", key)):
        check(transport == "quic" or value is None,
              f"{flag} applies to --transport quic only (TCP connects use no TLS)")
    if transport == "quic":
        client_ssl_context(ca, insecure=insecure, cert=cert, key=key)  # a bad file: said now
    cfg = ProbeConfig(count=count, interval_s=parse_duration_ms(interval, "--interval") / 1000,
                      timeout_s=timeout, ca=ca, insecure=insecure, cert=cert, key=key,
                      model=model,
                      api_key=api_key or None, max_tokens=max_tokens, prompt=prompt,
                      max_slowdown=max_slowdown, min_saving=min_saving)
    check_probe_config(cfg)
    return parsed, cfg


def run_probe_cli(targets: list[Any], cfg: ProbeConfig, *, as_json: bool,
                  console: Console) -> bool:
    """Probe, recommend and print; returns False if some target could not be reached."""
    # a refused QUIC handshake is a row of the table, not aioquic's log lines on stderr
    logging.getLogger("quic").setLevel(logging.CRITICAL)
    err = Console(stderr=True)
    spinner = err.status("probing") if err.is_terminal else contextlib.nullcontext()
    with spinner as status:
        def tick(target: str) -> None:
            if status is not None:
                status.update(f"probing {target}")

        records = clock.run(lambda: run_probe(targets, cfg, tick))
    if as_json:
        print(json.dumps(records))
    else:
        console.print(f"[bold]wanspec probe[/]: {cfg.count} samples per target; recommendation "
                      f"from the simulator (default settings, adaptive policy, budget "
                      f"{cfg.max_slowdown:g}x best SD, at least {100 * cfg.min_saving:.0f}% of "
                      "busy-site draft passes saved)", soft_wrap=True)
        console.print(probe_table(records))
        for line in recommendation_notes(records):
            console.print(line, markup=False, highlight=False)
    return all(r["rtt_ms"]["p50"] is not None for r in records)

