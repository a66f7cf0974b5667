"""``wanspec``: generate locally, run a controller or a worker, or emulate a WAN deployment."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from wanspec import __version__
from wanspec.cli.common import (check, check_count, configure_threads, fail, quiet_libraries,
                                site_threads, user_errors)
from wanspec.cli.render import print_generation
from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH, WorkerLimits
from wanspec.protocol.codec import DEFAULT_FRAME_TIMEOUT_S
from wanspec.timing.device import DEFAULT_TARGET_COST
from wanspec.units import parse_duration_ms, parse_duration_s


def _ms(text: str | None, flag: str) -> float | None:
    """A duration flag whose bare number is ms (``--target-ms 30`` = ``30ms`` = ``0.03s``)."""
    return None if text is None else parse_duration_ms(text, flag)

# the click that Typer runs on: the click package, or the copy that newer Typers vendor (whose
# exceptions are other classes); reached through a public name either way
_click_errors = sys.modules[typer.BadParameter.__module__]


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad choice, a malformed number, an unknown or missing option) print as the
    one-line ``error: ...`` with exit code 2 that every other bad value gives, not a boxed
    usage message."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _click_errors.UsageError as exc:
            _usage_error(exc)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _click_errors.UsageError as exc:
            _usage_error(exc)
            raise


def _argv_command() -> str:
    """``wanspec NAME`` from the command line, for an error raised before click knew which
    command it parsed (a flag missing its value)."""
    words = [w for w in sys.argv[1:2] if not w.startswith("-")]
    return " ".join(["wanspec", *words]) if words else "wanspec COMMAND"


def _usage_error(exc: Any) -> None:
    """Print ``exc`` as the one-line error (and exit 2), unless it is the help of a bare
    ``wanspec``, which it re-raises to show."""
    if isinstance(exc, getattr(_click_errors, "NoArgsIsHelpError", ())):
        return
    path = exc.ctx.command_path if exc.ctx is not None else _argv_command()
    message = exc.format_message().replace("Value error, ", "").rstrip(".")
    fail(f"{message[:1].lower()}{message[1:]} (see {path} --help)")


app = typer.Typer(
    cls=_OneLineErrors,
    name="wanspec",
    help="Speculative decoding across a wide-area network (lossless: identical to the target alone).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False)
_POLICY = PolicyConfig()  # its defaults are the options' defaults
_CONTROLLER = ControllerConfig()  # likewise
_LIMITS = WorkerLimits()  # the worker's limits: their defaults are the options' defaults
# help of options several commands take, so that each reads the same everywhere
_H_TEMPERATURE = "Sampling temperature; 0 = greedy."
_H_TOP_P = "Nucleus sampling: keep the likeliest tokens up to this probability mass; 1 disables."
_H_TOP_K = "Keep only the K likeliest tokens; 0 disables."
_H_SEED = "Sampling seed: output is a function of (seed, position)."
_H_DTYPE = "Model dtype: auto, float32, bfloat16 or float16."
_H_DEVICE = "Torch device: auto, cpu, cuda or cuda:N."
_H_THREADS = "torch CPU threads (default: torch's own choice)."
_H_SITE_THREADS = ("torch CPU threads (default: the CPUs this process may use, split evenly "
                   "with the other wanspec worker/controller processes on this machine).")
_H_VERBOSE = "Log connections, sessions and fallbacks (INFO level)."
_H_TRANSPORT = "tcp (TLS optional) or quic (always TLS)."
_H_BRANCHES = ("Branch lanes the worker may grow besides its main draft line (a draft tree: a "
               "rejection whose correction the tree holds needs no round trip); 0: a single "
               "chain.")


class GenerateMode(str, Enum):
    target = "target"
    sd = "sd"
    remote = "remote"


def _version(value: bool) -> None:
    if value:
        console.print(f"wanspec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Speculative decoding with the draft model at a remote site."""


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt text (-: read from stdin, less one trailing newline, as $(...) drops it; printf 'ROMEO.\\n\\n' gives the prompt 'ROMEO.\\n')."),
    mode: GenerateMode = typer.Option(GenerateMode.sd, "--mode", help="target: target-only; sd: standard SD at one site; remote: controller + worker in one process over an emulated link."),
    rtt: str = typer.Option("0ms", "--rtt", help="remote mode: round-trip time of the emulated link (e.g. 40ms)."),
    jitter: str = typer.Option("0ms", "--jitter", help="remote mode: one-way jitter (never reorders)."),
    policy: str = typer.Option("adaptive", "--policy", help="remote mode: remote, always, entropy or adaptive."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Maximum new tokens."),
    gamma: int = typer.Option(4, "--gamma", help="Draft tokens per verification window."),
    branches: int = typer.Option(_CONTROLLER.branches, "--branches", help="remote mode: b" + _H_BRANCHES[1:]),
    temperature: float = typer.Option(0.0, "--temperature", help=_H_TEMPERATURE),
    top_p: float = typer.Option(1.0, "--top-p", help=_H_TOP_P),
    top_k: int = typer.Option(0, "--top-k", help=_H_TOP_K),
    seed: int = typer.Option(0, "--seed", help=_H_SEED),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at the EOS token."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory (default: shipped pair)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory (default: shipped pair)."),
    target_ms: Optional[str] = typer.Option(None, "--target-ms", help="Emulate: time per target pass (virtual clock) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    draft_ms: Optional[str] = typer.Option(None, "--draft-ms", help="Emulate: time per draft pass (a bare number is ms; or e.g. 30ms, 0.03s)."),
    verify_per_token_ms: str = typer.Option("0", "--verify-per-token-ms", help="Emulate: extra time per additional token in a target pass (a bare number is ms; or e.g. 30ms, 0.03s)."),
    dtype: str = typer.Option("auto", "--dtype", help=_H_DTYPE),
    device: str = typer.Option("auto", "--device", help=_H_DEVICE),
    exact: bool = typer.Option(False, "--exact", help="Batch-invariant target kernels: every token bit-for-bit what the target computes decoding alone, whatever the pass shape (slower; docs/architecture.md)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=_H_THREADS),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token_ids, metrics)."),
) -> None:
    """Decode one prompt: at one site (target-only or standard speculative decoding), or at both in one process (--mode remote)."""
    quiet_libraries()
    with user_errors():
        from wanspec.cli.common import check, read_prompt
        from wanspec.cli.loading import check_model_flags, load_models, timing_from_flags
        from wanspec.runtime.engine import LocalEngine
        from wanspec.sampling import SamplingParams
        from wanspec.units import parse_duration_ms

        # every flag, before the models load
        text = read_prompt(prompt)
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        check_count("--gamma", gamma)
        check_count("--branches", branches, minimum=0)
        check_count("--max-tokens", max_tokens)
        rtt_ms, jitter_ms = parse_duration_ms(rtt, "--rtt"), parse_duration_ms(jitter, "--jitter")
        from wanspec.core.policy import PolicyName  # checked whatever the mode: a typo is a typo

        check(policy in {p.value for p in PolicyName}, f"unknown policy {policy!r}; choose "
              f"from {', '.join(p.value for p in PolicyName)}")
        timing = timing_from_flags(_ms(target_ms, "--target-ms"), _ms(draft_ms, "--draft-ms"),
                                   _ms(verify_per_token_ms, "--verify-per-token-ms") or 0.0)
        check_model_flags(dtype, device)
        configure_threads(threads)
        tgt, drf = load_models(target, draft, need_draft=mode is not GenerateMode.target, dtype=dtype,
                               device=device, exact=exact)
        kwargs = dict(max_tokens=max_tokens, sampling=sampling, stop_strings=stop or (),
                      ignore_eos=ignore_eos)
        if mode is GenerateMode.remote:
            from wanspec.runtime.inproc import remote_generate

            assert drf is not None
            result = remote_generate(
                tgt, drf, text, rtt_ms=rtt_ms, jitter_ms=jitter_ms, policy=policy, gamma=gamma,
                branches=branches, timing=timing, **kwargs).to_dict()
        else:
            engine = LocalEngine(tgt, drf, timing)
            result = engine.generate(text, mode=mode.value, gamma=gamma, **kwargs).to_dict()
    if as_json:
        print(json.dumps(result))
    else:
        print_generation(result, console)


# flags that shape serving under load only: refused without a load rather than ignored
LOAD_ONLY_FLAGS = {"--slo-tpot": "slo_tpot", "--max-batch": "max_batch",
                   "--worker-max-batch": "worker_max_batch", "--admission": "admission"}


@app.command()
def emulate(
    ctx: typer.Context,
    rtt: str = typer.Option("40ms", "--rtt", help="Round-trip time controller<->worker (e.g. 40ms)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="RTTs to compare, in the syntax of simulate --sweep: 0,10,20,30,50 or rtt=0:150:10 (ms unless a unit is given, e.g. 0.1s; overrides --rtt)."),
    jitter: str = typer.Option("0ms", "--jitter", help="One-way jitter per message (never reorders)."),
    bandwidth: str = typer.Option("0", "--bandwidth", help="Link bandwidth per direction: 100Mbit/s, 100Mbps, 12.5MB/s (bytes), 1Gbit; a bare number is Mbit/s; 0 = unlimited."),
    loss: float = typer.Option(0.0, "--loss", help="Probability a message is delayed by a retransmission spike."),
    target_ms: str = typer.Option("30", "--target-ms", help="Emulated time per target pass (default: 70B-class target) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    draft_ms: str = typer.Option("4", "--draft-ms", help="Emulated time per draft pass (default: 1B-class draft) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    verify_per_token_ms: str = typer.Option("0.5", "--verify-per-token-ms", help="Extra time per extra token in a target pass (a bare number is ms; or e.g. 30ms, 0.03s)."),
    compute_ms_per_token: str = typer.Option(f"{DEFAULT_TARGET_COST.compute_ms_per_token:g}", "--compute-ms-per-token", help="Target's compute floor per token fed (roofline: a pass of many tokens becomes compute-bound; matters under load) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    kv_ms_per_ktoken: str = typer.Option(f"{DEFAULT_TARGET_COST.kv_ms_per_ktoken:g}", "--kv-ms-per-ktoken", help="Target's cost of reading 1,000 tokens of KV cache (every request in a pass reads its own) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    per_sequence_ms: str = typer.Option(f"{DEFAULT_TARGET_COST.per_sequence_ms:g}", "--per-sequence-ms", help="Target's cost of each request a batched pass carries beyond the first (a bare number is ms; or e.g. 30ms, 0.03s)."),
    measured: bool = typer.Option(False, "--measured", help="Use this machine's real pass times instead of emulated costs."),
    policy: str = typer.Option("all", "--policy", help="remote, always, entropy, adaptive (comma-separated) or all."),
    gamma: int = typer.Option(4, "--gamma", help="Draft tokens per verification window (standard SD, fixed policies)."),
    branches: int = typer.Option(_CONTROLLER.branches, "--branches", help=_H_BRANCHES),
    sd_gammas: str = typer.Option("1-10", "--sd-gammas", help="Windows to search for best SD, the baseline of every ratio (a range like 1-10 or a list like 2,4,6)."),
    entropy_threshold: float = typer.Option(_POLICY.entropy_threshold, "--entropy-threshold", help="entropy policy: nats above which a rejection is predicted."),
    max_slowdown: float = typer.Option(_POLICY.max_slowdown, "--max-slowdown", help="adaptive policy: latency budget, as a multiple of the best decoding the busy site could do alone (estimated online); never slower than target-only."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts file (.jsonl or one per line); default: 16 held-out prompts."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", help="Use only the first N prompts."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="New tokens per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", help=_H_TEMPERATURE),
    top_p: float = typer.Option(1.0, "--top-p", help=_H_TOP_P),
    top_k: int = typer.Option(0, "--top-k", help=_H_TOP_K),
    seed: int = typer.Option(0, "--seed", help=_H_SEED),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory (default: shipped pair)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory (default: shipped pair)."),
    exact: bool = typer.Option(False, "--exact", help="Batch-invariant target kernels: every token bit-for-bit what the target computes decoding alone, whatever the pass shape (slower; docs/architecture.md)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=_H_THREADS),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per (RTT, mode) instead of tables."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the records as CSV."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also draw latency and busy-site pass ratios vs RTT (an image: .png, .svg, .pdf, ...; no extension: PNG)."),
    record: Optional[Path] = typer.Option(None, "--record", help="Also write the draft's per-position acceptance and entropy on these prompts as a trace for wanspec simulate --trace (JSONL)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="Serve under load: comma-separated numbers of concurrent clients (closed loop), e.g. 1,8,32,64; every site batches its passes."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Serve under load: Poisson arrivals at this many requests/s (open loop); with --concurrency, both are run."),
    slo_tpot: str = typer.Option("50ms", "--slo-tpot", help="Under load: goodput counts the tokens of requests whose time per output token meets this."),
    max_batch: int = typer.Option(64, "--max-batch", help="Under load: most requests one batched pass carries, at the busy site."),
    admission: bool = typer.Option(False, "--admission", help="Under load: admit a request only while the running ones are predicted to meet --slo-tpot (the rest queue, first come first served, never refused)."),
    host_overhead: str = typer.Option("0", "--host-overhead", help="0: the virtual clock charges device costs only (deterministic). measured: it also charges the host work measured as the run goes (the event loop's own Python; passes slower on this machine than their cost), as real sites pay it (docs/results.md §10)."),
    worker_max_batch: int = typer.Option(DEFAULT_WORKER_MAX_BATCH, "--worker-max-batch", help="Most sequences one worker draft pass carries: sessions and their branch lanes (as wanspec worker --max-batch)."),
    host_transport: str = typer.Option("inproc", "--host-transport", help="With --host-overhead measured: also charge both sites the host work this transport's stack does a message (tcp or quic: measured on loopback on this machine before the run, about a second); inproc: none, the in-process link's own work only."),
) -> None:
    """Compare target-only, standard SD and every remote policy over an emulated WAN (one request
    at a time, or under load with --concurrency / --request-rate)."""
    quiet_libraries()
    with user_errors():
        from wanspec.cli.common import check_only_with
        from wanspec.cli.emulate import run_emulate

        check_only_with(ctx, "--concurrency or --request-rate",
                        concurrency is not None or request_rate is not None, LOAD_ONLY_FLAGS)
        check_count("--gamma", gamma)
        check_count("--branches", branches, minimum=0)
        check_count("--max-tokens", max_tokens)
        check_count("--max-batch", max_batch)
        check_count("--worker-max-batch", worker_max_batch)
        ok = run_emulate(
            rtt=rtt, sweep=sweep, jitter=jitter, bandwidth=bandwidth, loss=loss,
            target_ms=_ms(target_ms, "--target-ms"), draft_ms=_ms(draft_ms, "--draft-ms"),
            verify_per_token_ms=_ms(verify_per_token_ms, "--verify-per-token-ms"),
            compute_ms_per_token=_ms(compute_ms_per_token, "--compute-ms-per-token"),
            kv_ms_per_ktoken=_ms(kv_ms_per_ktoken, "--kv-ms-per-ktoken"),
            per_sequence_ms=_ms(per_sequence_ms, "--per-sequence-ms"), measured=measured, policy=policy, gamma=gamma, entropy_threshold=entropy_threshold,
            max_slowdown=max_slowdown,
            prompts=prompts, num_prompts=num_prompts, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, target=target,
            draft=draft, threads=threads, as_json=as_json, csv_path=csv_path,
            plot_path=plot_path, record=record, console=console, sd_gammas=sd_gammas, exact=exact,
            concurrency=concurrency, request_rate=request_rate, slo_tpot=slo_tpot,
            max_batch=max_batch, worker_max_batch=worker_max_batch, admission=admission,
            branches=branches, host_overhead=host_overhead, host_transport=host_transport)
    if not ok:
        raise typer.Exit(1)


@app.command()
def simulate(
    ctx: typer.Context,
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", help="NAME=START:STOP:STEP (stop included when it lands on it) or NAME=V1,V2,...; repeat for a grid. Names: rtt, jitter, spike, target_ms, draft_ms, verify_per_token_ms, draft_per_token_ms (durations, as --rtt: bare numbers are ms); bandwidth (as --bandwidth: 100Mbit/s, 12.5MB/s; bare numbers are Mbit/s); loss, alpha, burst, rank2, rank3, rank4 (probabilities); separation, entropy_sd, entropy_threshold (nats); max_slowdown; gamma, lookahead, branches, max_tokens, requests, prompt_tokens, seed. Without NAME= the values are RTTs."),
    rtt: str = typer.Option("40ms", "--rtt", help="Round-trip time controller<->worker (e.g. 40ms)."),
    jitter: str = typer.Option("0ms", "--jitter", help="One-way jitter per message, uniform in [0, jitter] (never reorders)."),
    bandwidth: str = typer.Option("0", "--bandwidth", help="Link bandwidth per direction: 100Mbit/s, 100Mbps, 12.5MB/s (bytes), 1Gbit; a bare number is Mbit/s; 0 = unlimited."),
    loss: float = typer.Option(0.0, "--loss", help="Probability a message is delayed by a retransmission spike."),
    spike: Optional[str] = typer.Option(None, "--spike", help="Delay of a loss spike (default: one RTT)."),
    target_ms: Optional[str] = typer.Option(None, "--target-ms", help="Time per target pass, base cost (default: 30, a 70B-class target; with --trace: the recorded value) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    draft_ms: Optional[str] = typer.Option(None, "--draft-ms", help="Time per draft pass, at either site (default: 4, a 1B-class draft; with --trace: the recorded value) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    verify_per_token_ms: Optional[str] = typer.Option(None, "--verify-per-token-ms", help="Extra time per extra token in a target pass (default: 0.5; with --trace: the recorded value) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    draft_per_token_ms: Optional[str] = typer.Option(None, "--draft-per-token-ms", help="Extra time per extra token fed to a draft pass, to catch up (default: 0; with --trace: the recorded value) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    policy: str = typer.Option("all", "--policy", help="remote, always, entropy, adaptive (comma-separated) or all."),
    gamma: Optional[int] = typer.Option(None, "--gamma", help="Draft tokens per verification window (default: 4; with --trace: the recorded value)."),
    lookahead: int = typer.Option(0, "--lookahead", help="Worker lookahead cap in tokens (0 = automatic, from RTT and draft cost)."),
    branches: int = typer.Option(ControllerConfig().branches, "--branches", help="Draft tree: branch lanes the worker may grow besides its main chain, from the draft's runner-up tokens, so that a rejection's correction often has drafts waiting (0 = a single chain)."),
    entropy_threshold: float = typer.Option(_POLICY.entropy_threshold, "--entropy-threshold", help="entropy policy: nats above which a rejection is predicted."),
    max_slowdown: float = typer.Option(_POLICY.max_slowdown, "--max-slowdown", help="adaptive policy: latency budget, as a multiple of the best decoding the busy site could do alone (estimated online); never slower than target-only."),
    match: str = typer.Option("iid", "--match", help="Acceptance model: iid (each draft accepted with probability alpha), markov (bursty, see --burst) or trace (replay --trace)."),
    alpha: float = typer.Option(0.8, "--alpha", help="Per-token probability that a draft on the right prefix is accepted."),
    burst: float = typer.Option(0.5, "--burst", help="markov: lag-1 correlation of accept/reject outcomes (0 = iid, towards 1 = long easy/hard stretches)."),
    separation: float = typer.Option(1.0, "--separation", help="Draft entropy of rejected minus accepted drafts, in nats (0 = entropy says nothing)."),
    entropy_sd: float = typer.Option(0.35, "--entropy-sd", help="Spread (sd, nats) of the draft entropy within each class."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Replay acceptance and entropy from a JSONL trace (wanspec emulate --record; docs/simulator.md), charging the device costs it recorded; implies --match trace."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="New tokens per request."),
    requests: Optional[int] = typer.Option(None, "--requests", help="Requests per mode and point, run one after another (default: 16; with --trace: one per recorded request)."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Prompt length in tokens (trace replay uses the trace's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every synthetic sequence and of the link's jitter."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Worker processes (0 = automatic: all CPUs for big sweeps). Results do not depend on it."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per (point, mode) instead of tables."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the records as CSV."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also plot latency and busy-site passes vs standard SD, and stall, against the first swept parameter (an image: .png, .svg, .pdf, ...; no extension: PNG)."),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", help="Serve under load, as emulate --concurrency: comma-separated numbers of concurrent clients (closed loop), both sites batching; --sweep may then list RTTs only."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Serve under load: Poisson arrivals at this many requests/s (open loop)."),
    slo_tpot: str = typer.Option("50ms", "--slo-tpot", help="Under load: goodput counts the tokens of requests whose time per output token meets this."),
    max_batch: int = typer.Option(64, "--max-batch", help="Under load: most requests one batched pass carries, at the busy site."),
    admission: bool = typer.Option(False, "--admission", help="Under load: admit a request only while the running ones are predicted to meet --slo-tpot."),
    worker_max_batch: int = typer.Option(DEFAULT_WORKER_MAX_BATCH, "--worker-max-batch", help="Under load: most sequences one worker draft pass carries: sessions and their branch lanes (as wanspec worker --max-batch)."),
) -> None:
    """Simulate the real controller/worker state machines with synthetic models (seconds per sweep)."""
    with user_errors():
        from wanspec.cli.common import check_only_with
        from wanspec.cli.simulate import run_simulate

        check_only_with(ctx, "--concurrency or --request-rate",
                        concurrency is not None or request_rate is not None, LOAD_ONLY_FLAGS)
        check_only_with(ctx, "the synthetic acceptance model (a --trace replays its own)",
                        trace is None, {"--alpha": "alpha", "--burst": "burst",
                                        "--separation": "separation",
                                        "--entropy-sd": "entropy_sd",
                                        "--prompt-tokens": "prompt_tokens"})
        check_only_with(ctx, "--match markov", match == "markov", {"--burst": "burst"})
        if gamma is not None:
            check_count("--gamma", gamma)
        check_count("--max-tokens", max_tokens)
        check_count("--max-batch", max_batch)
        check_count("--worker-max-batch", worker_max_batch)

        ok = run_simulate(
            rtt=rtt, sweep=sweep or [], jitter=jitter, bandwidth=bandwidth, loss=loss,
            spike=spike, target_ms=_ms(target_ms, "--target-ms"),
            draft_ms=_ms(draft_ms, "--draft-ms"),
            verify_per_token_ms=_ms(verify_per_token_ms, "--verify-per-token-ms"),
            draft_per_token_ms=_ms(draft_per_token_ms, "--draft-per-token-ms"),
            policy=policy, gamma=gamma, lookahead=lookahead, entropy_threshold=entropy_threshold,
            max_slowdown=max_slowdown, match=match, alpha=alpha, burst=burst,
            separation=separation, entropy_sd=entropy_sd, trace=trace, max_tokens=max_tokens,
            requests=requests, prompt_tokens=prompt_tokens, seed=seed, jobs=jobs,
            as_json=as_json, csv_path=csv_path, plot_path=plot_path, console=console,
            concurrency=concurrency, request_rate=request_rate, slo_tpot=slo_tpot,
            max_batch=max_batch, worker_max_batch=worker_max_batch, admission=admission,
            branches=branches)
    if not ok:
        raise typer.Exit(1)


class Transport(str, Enum):
    tcp = "tcp"
    quic = "quic"


@app.command()
def worker(
    listen: str = typer.Option("127.0.0.1:7700", "--listen", help="HOST:PORT to listen on (port 0 = any free port)."),
    transport: Transport = typer.Option(Transport.tcp, "--transport", help=_H_TRANSPORT),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory (default: shipped draft)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="TLS certificate (PEM); QUIC requires one."),
    key: Optional[Path] = typer.Option(None, "--key", help="TLS private key (PEM)."),
    client_ca: Optional[Path] = typer.Option(None, "--client-ca", help="Mutual TLS: serve only controllers presenting a certificate signed by this CA (PEM, e.g. the ca.pem of `wanspec certs`); needs --cert/--key."),
    auth_key_file: Optional[Path] = typer.Option(None, "--auth-key-file", help="Pre-shared key (a file of at least 16 bytes, e.g. from `openssl rand -hex 32`): controllers must prove they hold the same key, and this worker proves it to them. Default: the key in $WANSPEC_AUTH_KEY, if set."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve a non-loopback address without authentication (neither --auth-key-file nor --client-ca): anyone who reaches the port gets drafts and sees prompts. Trusted test networks only."),
    draft_ms: Optional[str] = typer.Option(None, "--draft-ms", help="Emulate this time per draft pass (floor on real time) (a bare number is ms; or e.g. 30ms, 0.03s)."),
    max_batch: int = typer.Option(DEFAULT_WORKER_MAX_BATCH, "--max-batch", help="Most sequences one draft pass carries, of all controllers together: each session's main line and its draft tree's branch lanes. Beyond it branch lanes pause first, then sessions share passes oldest first and their lookaheads shrink."),
    no_fit_trees: bool = typer.Option(False, "--no-fit-trees", help="Grow draft trees up to --max-batch and --max-branches whatever a pass costs. Default: branch lanes only while a draft pass, as measured here, costs under twice what the sessions' main lines alone cost (a CPU: a few lanes; an accelerator: up to --max-batch)."),
    max_connections: int = typer.Option(_LIMITS.max_connections, "--max-connections", help="Most open connections (handshakes included); beyond it a controller is refused as overloaded and decodes locally."),
    max_sessions: int = typer.Option(_LIMITS.max_sessions, "--max-sessions", help="Most live sessions, all connections together; beyond it a request is refused as overloaded."),
    max_connection_sessions: int = typer.Option(_LIMITS.max_connection_sessions, "--max-connection-sessions", help="Most live sessions of one connection."),
    max_prompt: int = typer.Option(_LIMITS.max_prompt, "--max-prompt", help="Longest prompt of a session, in tokens."),
    max_lookahead: int = typer.Option(_LIMITS.max_lookahead, "--max-lookahead", help="Most tokens a session drafts past its committed prefix (a controller asks for less)."),
    max_branches: int = typer.Option(_LIMITS.max_branches, "--max-branches", help="Most branch lanes of one session's draft tree, besides its main line (each holds a KV cache; a controller asks for fewer); 0: a single chain."),
    hello_timeout: str = typer.Option(f"{_LIMITS.hello_timeout_s:g}", "--hello-timeout", help="Time a new connection has to send Hello (a bare number is seconds; or e.g. 500ms, 2s)."),
    idle_timeout: str = typer.Option(f"{_LIMITS.idle_timeout_s:g}", "--idle-timeout", help="Time without any message (controllers ping every second) before a connection is closed; 0 = never (a bare number is seconds; or e.g. 500ms, 2s)."),
    frame_timeout: str = typer.Option(f"{DEFAULT_FRAME_TIMEOUT_S:g}", "--frame-timeout", help="Time a frame may take to arrive whole from its first byte, or to be taken by the peer; a peer slower than that is dropped (a bare number is seconds; or e.g. 500ms, 2s)."),
    dtype: str = typer.Option("auto", "--dtype", help=_H_DTYPE),
    device: str = typer.Option("auto", "--device", help=_H_DEVICE),
    threads: Optional[int] = typer.Option(None, "--threads", help=_H_SITE_THREADS),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_H_VERBOSE),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Also serve /metrics (Prometheus) and /health over HTTP on this port (same host as --listen); docs/serving.md."),
) -> None:
    """Serve drafts at the under-used site: draft ahead continuously for each controller session."""
    quiet_libraries()
    with user_errors():
        from wanspec.cli.sites import run_worker, setup_logging

        setup_logging(verbose)
        check_count("--max-batch", max_batch)
        limits = WorkerLimits(
            max_connections=max_connections, max_sessions=max_sessions,
            max_connection_sessions=max_connection_sessions, max_prompt=max_prompt,
            max_lookahead=max_lookahead, max_branches=max_branches,
            hello_timeout_s=parse_duration_s(hello_timeout, "--hello-timeout"),
            idle_timeout_s=parse_duration_s(idle_timeout, "--idle-timeout", zero=True))
        with site_threads("worker", threads) as site:
            run_worker(listen=listen, transport=transport.value, draft=draft, cert=cert, key=key,
                       client_ca=client_ca, auth_key_file=auth_key_file, insecure=insecure,
                       draft_ms=_ms(draft_ms, "--draft-ms"), limits=limits,
                       frame_timeout=parse_duration_s(frame_timeout, "--frame-timeout"),
                       max_batch=max_batch, fit_trees=not no_fit_trees, dtype=dtype, device=device,
                       console=console, metrics_port=metrics_port, site=site)


@app.command()
def controller(
    ctx: typer.Context,
    worker_addr: List[str] = typer.Option(..., "--worker", help="Worker HOST:PORT. Repeat for several workers: each request drafts on the one with the least expected wait per accepted draft (RTT, load, acceptance) and moves to another if its worker fails or refuses it."),
    transport: Transport = typer.Option(Transport.tcp, "--transport", help=_H_TRANSPORT),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Decode this prompt and exit (-: read from stdin, less one trailing newline)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts file (.jsonl or one per line)."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Maximum new tokens per prompt."),
    gamma: int = typer.Option(4, "--gamma", help="Draft tokens per verification window."),
    branches: int = typer.Option(_CONTROLLER.branches, "--branches", help=_H_BRANCHES),
    policy: str = typer.Option("adaptive", "--policy", help="remote, always, entropy or adaptive."),
    max_slowdown: float = typer.Option(_POLICY.max_slowdown, "--max-slowdown", help="adaptive policy: latency budget, as a multiple of the best decoding the busy site could do alone (estimated online); never slower than target-only."),
    no_local_draft: bool = typer.Option(False, "--no-local-draft", help="Load no local draft copy: without a worker, decode target-only (default: a local copy for redundant drafts and fallback)."),
    temperature: float = typer.Option(0.0, "--temperature", help=_H_TEMPERATURE),
    top_p: float = typer.Option(1.0, "--top-p", help=_H_TOP_P),
    top_k: int = typer.Option(0, "--top-k", help=_H_TOP_K),
    seed: int = typer.Option(0, "--seed", help=_H_SEED),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at the EOS token."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory (default: shipped target)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Local draft copy (default: shipped draft)."),
    ca: Optional[Path] = typer.Option(None, "--ca", help="CA certificate to trust for the worker's TLS certificate."),
    tls: bool = typer.Option(False, "--tls", help="Use TLS over TCP (QUIC always uses TLS)."),
    insecure: bool = typer.Option(False, "--insecure", help="Do not verify the worker's TLS certificate: still encrypted, but any host can pose as the worker (testing only)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="Mutual TLS: client certificate (PEM) to present to a worker started with --client-ca, e.g. the client.pem of `wanspec certs` (implies --tls over TCP)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Private key (PEM) of --cert."),
    auth_key_file: Optional[Path] = typer.Option(None, "--auth-key-file", help="Pre-shared key file, the worker's: both sites prove they hold it, and a worker that cannot is not used. Default: the key in $WANSPEC_AUTH_KEY, if set."),
    timeout: str = typer.Option("5", "--timeout", help="Time to wait for the worker to connect/handshake (a bare number is seconds; or e.g. 500ms, 2s)."),
    target_ms: Optional[str] = typer.Option(None, "--target-ms", help="Emulate this time per target pass (floor on real time); with --draft-ms (a bare number is ms; or e.g. 30ms, 0.03s)."),
    draft_ms: Optional[str] = typer.Option(None, "--draft-ms", help="Emulate this time per local draft pass; with --target-ms (a bare number is ms; or e.g. 30ms, 0.03s)."),
    dtype: str = typer.Option("auto", "--dtype", help=_H_DTYPE),
    device: str = typer.Option("auto", "--device", help=_H_DEVICE),
    exact: bool = typer.Option(False, "--exact", help="Batch-invariant target kernels: every token bit-for-bit what the target computes decoding alone, whatever the pass shape (slower; docs/architecture.md)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=_H_SITE_THREADS),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines: one object (text, token_ids, metrics) per prompt as it finishes."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=_H_VERBOSE),
    listen: Optional[str] = typer.Option(None, "--listen", help="Serve an OpenAI-compatible API (as vLLM's) on HOST:PORT until SIGINT/SIGTERM, instead of decoding --prompt(s); docs/serving.md."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="WANSPEC_API_KEY", show_envvar=True, help="With --listen: require 'Authorization: Bearer KEY' on /v1/*."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="With --listen: the model name the API answers to (default: the target directory's name)."),
    grace: str = typer.Option("30", "--grace", help="With --listen: time in-flight requests may take to finish once stopped, then they are cancelled (a bare number is seconds; or e.g. 500ms, 2s)."),
    max_request_bytes: Optional[int] = typer.Option(None, "--max-request-bytes", help="With --listen: the largest request body accepted (413 beyond it; default: room for a full-context prompt, 1-8 MiB)."),
    max_prompts_per_request: int = typer.Option(64, "--max-prompts-per-request", help="With --listen: the most completions one request may ask for (prompts x n; 400 beyond it)."),
    max_queued_requests: int = typer.Option(256, "--max-queued-requests", help="With --listen: the most generation requests in flight, running or waiting (503 beyond it)."),
    require_worker: bool = typer.Option(False, "--require-worker", help="Exit with code 1 at the first prompt no worker drafted (unreachable, refused, failed), instead of decoding it at the busy site alone: for scripts that must not fall back silently."),
) -> None:
    """Decode at the busy site: verify the worker's drafts with the target; lossless."""
    quiet_libraries()
    with user_errors():
        from wanspec.cli.common import check, read_prompt
        from wanspec.cli.sites import WorkerRequired, run_controller, setup_logging
        from wanspec.emulate.prompts import load_prompts
        from wanspec.sampling import SamplingParams

        from wanspec.cli.common import check_only_with

        setup_logging(verbose)
        check_only_with(ctx, "--listen", listen is not None,
                        {"--api-key": "api_key", "--served-model-name": "served_model_name",
                         "--grace": "grace", "--max-request-bytes": "max_request_bytes",
                         "--max-prompts-per-request": "max_prompts_per_request",
                         "--max-queued-requests": "max_queued_requests"})
        given = [f for f, v in (("--listen", listen), ("--prompt", prompt), ("--prompts", prompts))
                 if v is not None]
        check(len(given) == 1, "give exactly one of --prompt or --prompts (or --listen to serve)"
              + (f"; got {' and '.join(given)}" if given else ""))
        check_count("--gamma", gamma)
        check_count("--branches", branches, minimum=0)
        check_count("--max-tokens", max_tokens)
        timeout_s = parse_duration_s(timeout, "--timeout")
        grace_s = parse_duration_s(grace, "--grace", zero=True)
        prompt_list = ([] if listen is not None else
                       [read_prompt(prompt)] if prompt is not None else load_prompts(prompts))
        try:
            with site_threads("controller", threads) as site:
                run_controller(
                    worker=worker_addr, transport=transport.value, target=target, draft=draft,
                    local_draft=not no_local_draft, prompts=prompt_list, max_tokens=max_tokens,
                    gamma=gamma, branches=branches,
                    policy=policy, max_slowdown=max_slowdown,
                    sampling=SamplingParams(temperature, top_k, top_p, seed),
                    stop=stop or (), ignore_eos=ignore_eos, ca=ca, insecure=insecure,
                    tls=tls, cert=cert, key=key, auth_key_file=auth_key_file, timeout_s=timeout_s,
                    target_ms=_ms(target_ms, "--target-ms"), draft_ms=_ms(draft_ms, "--draft-ms"),
                    dtype=dtype,
                    device=device, exact=exact, as_json=as_json, console=console,
                    listen=listen, api_key=api_key, grace_s=grace_s, model_name=served_model_name,
                    service_limits=dict(max_request_bytes=max_request_bytes,
                                        max_prompts_per_request=max_prompts_per_request,
                                        max_queued_requests=max_queued_requests),
                    require_worker=require_worker, site=site)
        except WorkerRequired as exc:
            fail(str(exc), code=1)


@app.command()
def certs(
    directory: Path = typer.Argument(..., help="Where to write ca.pem, ca.key, server.pem, server.key, client.pem, client.key."),
    host: Optional[List[str]] = typer.Option(None, "--host", help="A DNS name or IP address controllers dial, for the worker certificate (repeatable); localhost, 127.0.0.1 and ::1 are always in it. A controller dialling a name it lacks refuses the worker."),
    client: Optional[str] = typer.Option(None, "--client", help="Only issue one more client certificate, NAME.pem / NAME.key, from the CA already in DIRECTORY (one per controller)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace certificates and keys already in DIRECTORY."),
) -> None:
    """Create a self-signed CA, a worker certificate and a controller (client) certificate for
    TLS/QUIC and mutual TLS on first use."""
    with user_errors():
        from wanspec.transport.certs import DEFAULT_HOSTS, create_certs, create_client_cert

        if client is not None:
            one = create_client_cert(directory, client, overwrite=overwrite)
            console.print(f"controller certificate / key (controller --cert / --key): "
                          f"{one.cert} {one.key}", soft_wrap=True)
            return
        paths = create_certs(directory, hosts=(*DEFAULT_HOSTS, *(host or ())), overwrite=overwrite)
        console.print(f"CA certificate (controller --ca; worker --client-ca for mutual TLS): "
                      f"{paths.ca_cert}", soft_wrap=True)
        console.print(f"worker certificate / key (worker --cert / --key): {paths.cert} {paths.key}", soft_wrap=True)
        console.print(f"controller certificate / key (controller --cert / --key, mutual TLS): "
                      f"{paths.client_cert} {paths.client_key}", soft_wrap=True)


# ---- client tools for OpenAI-compatible endpoints (issue 13): bench, probe ----------------------
_API_KEY_ENV = ["WANSPEC_API_KEY", "OPENAI_API_KEY"]


@app.command()
def bench(
    url: str = typer.Option(..., "--url", help="The server: http(s)://HOST:PORT, its /v1, or the full /v1/completions or /v1/chat/completions URL."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Closed loop: N clients, each sending its next prompt when its last response ended (default: 1)."),
    request_rate: Optional[float] = typer.Option(None, "--request-rate", help="Open loop: Poisson arrivals at R requests/s (seeded by --seed), whatever is in flight."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompts file (.jsonl or one per line); default: the shipped held-out prompts."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", help="Requests to send (the prompts of the file in order, cycled); default: one per prompt."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Most new tokens per request."),
    chat: bool = typer.Option(False, "--chat", help="POST /v1/chat/completions (one user message) instead of /v1/completions."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name; default: the first of GET /v1/models."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar=_API_KEY_ENV, show_envvar=True, help="Sent in an Authorization: Bearer KEY header."),
    temperature: float = typer.Option(0.0, "--temperature", help=_H_TEMPERATURE),
    seed: int = typer.Option(0, "--seed", help="Seed of the arrivals and of the sampling of each request."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Ask for exactly --max-tokens tokens (the ignore_eos extension of vLLM)."),
    timeout: str = typer.Option("60", "--timeout", help="Time to wait to connect and for each chunk; beyond, the request fails as a timeout (a bare number is seconds; or e.g. 500ms, 2s)."),
    slo_tpot: Optional[str] = typer.Option("50ms", "--slo-tpot", help="Goodput counts requests whose time per output token meets this (none: no TPOT target)."),
    slo_ttft: Optional[str] = typer.Option(None, "--slo-ttft", help="... and whose time to first token meets this."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: the summary and every request."),
) -> None:
    """Load-test an OpenAI-compatible endpoint (wanspec or vLLM): TTFT, TPOT, ITL, E2E
    percentiles, throughput, goodput under an SLO, errors by kind (definitions: docs/bench.md)."""
    with user_errors():
        from wanspec.cli.bench import bench_config, run_bench_cli

        check_count("--max-tokens", max_tokens)
        check(seed >= 0, f"--seed must be >= 0, got {seed}")  # as every other command's

        cfg = bench_config(url=url, chat=chat, concurrency=concurrency,
                           request_rate=request_rate, prompts=prompts, num_prompts=num_prompts,
                           max_tokens=max_tokens, model=model, api_key=api_key, seed=seed,
                           temperature=temperature, ignore_eos=ignore_eos,
                           timeout=parse_duration_s(timeout, "--timeout"), slo_tpot=slo_tpot, slo_ttft=slo_ttft)
        ok = run_bench_cli(cfg, as_json=as_json, console=console)
    if not ok:
        raise typer.Exit(1)


@app.command()
def probe(
    targets: List[str] = typer.Argument(..., help="HOST:PORT (a worker: connect RTT) or http(s)://URL (an OpenAI-compatible server: connect RTT and TTFT)."),
    count: int = typer.Option(10, "--count", "-c", help="Samples per target."),
    interval: str = typer.Option("100ms", "--interval", help="Pause between two samples of a target (a bare number is ms; or e.g. 0.1s)."),
    transport: Transport = typer.Option(Transport.tcp, "--transport", help="HOST:PORT targets: time TCP connects, or QUIC handshakes with a wanspec worker."),
    ca: Optional[Path] = typer.Option(None, "--ca", help="QUIC: CA certificate to check the certificate of the worker against."),
    insecure: bool = typer.Option(False, "--insecure", help="QUIC: do not verify the certificate of the worker."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="QUIC: client certificate (PEM) to present to a worker started with --client-ca (mutual TLS), e.g. the client.pem of `wanspec certs`; without it the timed handshake still completes, but that worker refuses and logs every probe."),
    key: Optional[Path] = typer.Option(None, "--key", help="QUIC: private key (PEM) of --cert."),
    timeout: str = typer.Option("5", "--timeout", help="Time per sample before it counts as failed (a bare number is seconds; or e.g. 500ms, 2s)."),
    chat: bool = typer.Option(False, "--chat", help="URL targets: probe /v1/chat/completions."),
    model: Optional[str] = typer.Option(None, "--model", help="URL targets: model name; default: the first of GET /v1/models."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar=_API_KEY_ENV, show_envvar=True, help="URL targets: sent in an Authorization: Bearer KEY header."),
    max_tokens: int = typer.Option(8, "--max-tokens", "-n", help="URL targets: tokens per probe completion."),
    prompt: str = typer.Option("Hello", "--prompt", help="URL targets: the prompt of the probe completions."),
    max_slowdown: float = typer.Option(_POLICY.max_slowdown, "--max-slowdown", help="Recommendation: the latency budget of remote drafting, as a multiple of best SD."),
    min_saving: float = typer.Option(0.5, "--min-saving", help="Recommendation: close enough when remote drafting saves at least this fraction of busy-site draft passes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list, a record per target."),
) -> None:
    """Measure the RTT (and the TTFT of an endpoint) to each target and say which are close enough
    for remote drafting (as the simulator predicts at the measured RTT)."""
    with user_errors():
        from wanspec.cli.bench import probe_config, run_probe_cli

        check_count("--count", count)

        parsed, cfg = probe_config(
            targets=targets, transport=transport.value, chat=chat, count=count,
            interval=interval, timeout=parse_duration_s(timeout, "--timeout"), ca=ca,
            insecure=insecure, cert=cert, key=key, model=model,
            api_key=api_key, max_tokens=max_tokens, prompt=prompt, max_slowdown=max_slowdown,
            min_saving=min_saving)
        ok = run_probe_cli(parsed, cfg, as_json=as_json, console=console)
    if not ok:
        raise typer.Exit(1)
# ---- end of client tools --------------------------------------------------------------------------


@app.command("delay-proxy")
def delay_proxy(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to accept on (give this to the controller as its --worker)."),
    to: str = typer.Option(..., "--to", help="HOST:PORT to forward to (the worker's --listen)."),
    rtt: str = typer.Option(..., "--rtt", help="Round trip added: half of it each way (a bare number is ms; or e.g. 30ms, 0.03s)."),
    jitter: str = typer.Option("0", "--jitter", help="Extra delay each way, uniform in [0, JITTER] per chunk; never reorders (a bare number is ms)."),
    udp: bool = typer.Option(False, "--udp", help="Forward UDP datagrams (for --transport quic) instead of TCP connections."),
    seed: int = typer.Option(0, "--seed", help="Seed of the jitter."),
) -> None:
    """Forward a port to another with a round trip added, to try a WAN deployment on one machine
    (no root needed, unlike tc netem); e.g. between a worker and a controller on loopback."""
    with user_errors():
        from wanspec.cli.proxy import run_delay_proxy

        run_delay_proxy(listen=listen, to=to, rtt=rtt, jitter=jitter, udp=udp, seed=seed,
                        console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
