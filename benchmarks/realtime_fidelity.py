"""Real processes over real sockets beside `wanspec emulate`: how far the virtual clock is from
what a deployment pays (issue 15).

For each transport, a real `wanspec worker --draft-ms D` runs as its own process; for each RTT a
`wanspec delay-proxy` (its own process, not for RTT 0) adds the round trip on loopback; for each
policy a real `wanspec controller --target-ms T --draft-ms D --prompts ... --json` decodes the
prompts one after another through it.  The same prompts then run in `emulate`'s in-process
deployment on the virtual clock with the same flat device costs (T per target pass, D per draft
pass).  Per (transport, RTT, policy) it reports, side by side:

* TPOT: (wall - TTFT) / (tokens - 1), summed over the measured requests;
* busy-site draft passes per committed token, and stall (ms per token);
* host CPU per committed token at each site (real runs: user + system time of each process,
  from /proc, over the measured requests; the worker serves only this controller);
* whether every output was token-identical to emulate's (both are lossless).

`emulate` runs on its plain virtual clock (device costs only), with `--host-overhead measured`
(each site's own Python and passes slower than their cost charged), and for each transport with
`--host-overhead measured --host-transport T` too (also that transport's stack, measured on
loopback first: host work a message the in-process link does not do).

The first prompt warms each controller up (connection, first passes) and is not measured.
Both processes use their default torch threads (on one machine the sites split the CPUs) unless
--threads is given.  Not a test: by hand, on a quiet machine (other work skews real time).

    .venv/bin/python benchmarks/realtime_fidelity.py --json benchmarks/results/realtime_fidelity.json
    .venv/bin/python benchmarks/realtime_fidelity.py --rtts 20 --policies adaptive --prompts 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_server import ROOT, WANSPEC, fail, listening, start, stop

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
READY_S = 300.0
RUN_S = 1800.0  # one controller run, at most (then it is killed and the benchmark stops)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    """The side-by-side figures of some requests' result dicts (GenerationResult.to_dict)."""
    tokens = sum(len(r["token_ids"]) for r in results)
    after_first = sum(r["metrics"]["wall_s"] - r["metrics"]["ttft_s"] for r in results)
    busy = sum(r["metrics"]["draft_passes"].get("controller", 0) for r in results)
    target = sum(r["metrics"]["target_passes"] for r in results)
    stall = sum(r["metrics"].get("stall_s", 0.0) for r in results)
    # the busy site's loop CPU while its accelerator sat idle (what its passes waited on the
    # host for, an upper bound: in-process, emulate's loop also runs the worker)
    idle_cpu = sum(r["metrics"]["devices"].get("controller", {}).get("idle_loop_cpu_s", 0.0)
                   for r in results)
    # the busy device's idle time between a pass and the next that a request of it queued in
    # its reaction (the host work on the critical path; a lower bound: passes started by a
    # worker's message or a timer are not in it)
    turn = [r["metrics"]["devices"].get("controller", {}) for r in results]
    turn_s, turns = sum(d.get("turnaround_s", 0.0) for d in turn), sum(d.get("turnarounds", 0)
                                                                     for d in turn)
    return {"tokens": tokens,
            "busy_idle_loop_cpu_ms_per_token": 1000 * idle_cpu / max(tokens, 1),
            "busy_turnaround_ms_per_token": 1000 * turn_s / max(tokens, 1),
            "busy_turnaround_ms_per_pass": 1000 * turn_s / max(turns, 1),
            "tpot_ms": 1000 * after_first / max(tokens - len(results), 1),
            "busy_passes_per_token": busy / max(tokens, 1),
            # with the accelerator mostly busy, TPOT ~ target passes a token x their cost: a
            # real run with more of them verified shorter windows (its drafts came later)
            "target_passes_per_token": target / max(tokens, 1),
            "stall_ms_per_token": 1000 * stall / max(tokens, 1)}


def held_out(n: int, path: Path) -> tuple[list[str], Path]:
    """The first ``n`` held-out prompts, and a prompts file for ``wanspec controller
    --prompts``: a warm-up prompt (the pool's last, not measured) and then those."""
    sys.path.insert(0, str(ROOT / "src"))
    from wanspec.emulate.prompts import DEFAULT_PROMPTS, load_prompts

    pool = load_prompts(DEFAULT_PROMPTS.with_name("heldout_large.jsonl"))
    prompts, warmup = pool[: min(n, len(pool) - 1)], pool[-1]  # (the warm-up is never measured)
    path.write_text("".join(json.dumps(p) + "\n" for p in [warmup, *prompts]))
    return prompts, path


def real_run(args: argparse.Namespace, worker: subprocess.Popen[str], address: str, kind: str,
             policy: str, prompts_file: Path, tls: list[str], log: Path) -> dict[str, Any]:
    """One controller process decoding every prompt through ``address``; the first is warm-up."""
    cmd = [*WANSPEC, "controller", "--worker", address, "--transport", kind, *tls,
           "--prompts", str(prompts_file), "--json", "-n", str(args.max_tokens),
           "--policy", policy, "--target-ms", str(args.target_ms), "--draft-ms", str(args.draft_ms),
           "--require-worker",  # a run the worker did not draft would measure local decoding
           *(["--threads", str(args.threads)] if args.threads else [])]
    proc = start(cmd, log, read_stdout=True)
    assert proc.stdout is not None
    results, marks = [], []
    watchdog = threading.Timer(RUN_S, proc.kill)  # a hung controller ends the benchmark
    watchdog.start()
    try:
        for line in proc.stdout:  # one JSON line per prompt, as it finishes
            marks.append((cpu_s(proc.pid), cpu_s(worker.pid)))
            results.append(json.loads(line))
        if proc.wait(READY_S) != 0 or len(results) < 2:
            fail(f"controller ({policy}) failed", proc, log)
    finally:
        watchdog.cancel()
        stop(proc)
    measured = results[1:]
    tokens = max(sum(len(r["token_ids"]) for r in measured), 1)
    (c0, w0), (c1, w1) = marks[0], marks[-1]
    return {**summarize(measured), "results": measured,
            "controller_cpu_ms_per_token": 1000 * (c1 - c0) / tokens,
            "worker_cpu_ms_per_token": 1000 * (w1 - w0) / tokens,
            "command": " ".join(cmd[2:])}


def emulated(args: argparse.Namespace, prompts: list[str], rtts: list[float],
             policies: list[str], host_overhead: bool, stack_ms: float = 0.0
             ) -> dict[tuple[float, str], dict[str, Any]]:
    """The same prompts on emulate's in-process deployment, virtual clock, same flat costs
    (``host_overhead``: also charging the host work measured as it runs; ``stack_ms``: and a
    transport stack's, per message and end)."""
    import dataclasses

    import torch

    from wanspec.emulate.runner import Emulation, EmulationConfig
    from wanspec.models.backend import CausalLM
    from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from wanspec.runtime.engine import TimingConfig

    torch.set_num_threads(args.threads or 2)
    cfg = EmulationConfig(rtts_ms=tuple(rtts), policies=tuple(policies),
                          timing=dataclasses.replace(
                              TimingConfig.emulate(args.target_ms, args.draft_ms),
                              host_overhead=host_overhead),
                          max_tokens=args.max_tokens, host_stack_ms=stack_ms)
    emu = Emulation(CausalLM(DEFAULT_TARGET, name="target"), CausalLM(DEFAULT_DRAFT, name="draft"),
                    cfg)
    out = {}
    for rtt in rtts:
        for policy in policies:
            results = [r.to_dict() for r in emu.remote_results(policy, rtt, prompts)]
            out[rtt, policy] = {**summarize(results), "results": results}
    return out


def rel(a: float, b: float) -> float:
    return 0.0 if a == b else (a - b) / b if b else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transports", default="tcp,quic")
    ap.add_argument("--rtts", default="0,20,100", help="ms")
    ap.add_argument("--policies", default="remote,always,entropy,adaptive")
    ap.add_argument("--prompts", type=int, default=8, help="measured prompts (plus a warm-up)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--draft-ms", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of each site (default: each site's own default)")
    ap.add_argument("--worker-flags", default="",
                    help="more flags for the real worker, e.g. --worker-flags=--no-fit-trees")
    ap.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rtts = [float(x) for x in args.rtts.split(",")]
    policies = args.policies.split(",")
    transports = args.transports.split(",")

    prompts, prompts_file = held_out(args.prompts, args.logs / "realtime_fidelity.prompts.jsonl")

    from wanspec.transport.stack_cost import measure

    stack_ms = {kind: measure(kind).per_side_ms for kind in transports}
    print("transport stacks, host ms a message at each end: "
          + ", ".join(f"{k} {v:.3f}" for k, v in stack_ms.items()), file=sys.stderr)
    t0 = time.time()
    emu = emulated(args, prompts, rtts, policies, host_overhead=False)
    emu_bare_host = emulated(args, prompts, rtts, policies, host_overhead=True)
    emu_host = {kind: emulated(args, prompts, rtts, policies, host_overhead=True,
                               stack_ms=stack_ms[kind]) for kind in transports}
    print(f"emulated in {time.time() - t0:.0f} s", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    certs = args.logs / "realtime_fidelity.certs"
    for kind in transports:
        tls_worker: list[str] = []
        tls_controller: list[str] = []
        if kind == "quic":
            if not (certs / "server.pem").exists():
                subprocess.run([*WANSPEC, "certs", str(certs)], check=True, capture_output=True)
            tls_worker = ["--cert", str(certs / "server.pem"), "--key", str(certs / "server.key")]
            tls_controller = ["--ca", str(certs / "ca.pem")]
        wlog = args.logs / f"realtime_fidelity.{kind}.worker.log"
        worker = start([*WANSPEC, "worker", "--listen", "127.0.0.1:0", "--transport", kind,
                        "--draft-ms", str(args.draft_ms), *tls_worker, *args.worker_flags.split(),
                        *(["--threads", str(args.threads)] if args.threads else [])],
                       wlog, read_stdout=True)
        try:
            worker_addr = listening(worker, wlog, "worker")
            for rtt in rtts:
                proxy = None
                address = worker_addr
                try:
                    if rtt > 0:
                        plog = args.logs / f"realtime_fidelity.{kind}.proxy.log"
                        proxy = start([*WANSPEC, "delay-proxy", "--listen", "127.0.0.1:0",
                                       "--to", worker_addr, "--rtt", f"{rtt:g}ms",
                                       *(["--udp"] if kind == "quic" else [])],
                                      plog, read_stdout=True)
                        address = listening(proxy, plog, "delay proxy")
                    for policy in policies:
                        log = args.logs / f"realtime_fidelity.{kind}.{policy}.log"
                        real = real_run(args, worker, address, kind, policy, prompts_file,
                                        tls_controller, log)
                        e, b = emu[rtt, policy], emu_bare_host[rtt, policy]
                        h = emu_host[kind][rtt, policy]
                        row = {"transport": kind, "rtt_ms": rtt, "policy": policy,
                               "tpot_ms_real": real["tpot_ms"], "tpot_ms_emulate": e["tpot_ms"],
                               "tpot_rel_diff": rel(real["tpot_ms"], e["tpot_ms"]),
                               "tpot_ms_emulate_host": h["tpot_ms"],
                               "tpot_rel_diff_host": rel(real["tpot_ms"], h["tpot_ms"]),
                               "stack_ms_per_side": stack_ms[kind],
                               "tpot_ms_emulate_host_no_stack": b["tpot_ms"],
                               "tpot_rel_diff_host_no_stack": rel(real["tpot_ms"], b["tpot_ms"]),
                               "busy_emulate_host_no_stack": b["busy_passes_per_token"],
                               "busy_real": real["busy_passes_per_token"],
                               "busy_emulate": e["busy_passes_per_token"],
                               "busy_emulate_host": h["busy_passes_per_token"],
                               "target_passes_real": real["target_passes_per_token"],
                               "target_passes_emulate": e["target_passes_per_token"],
                               "target_passes_emulate_host": h["target_passes_per_token"],
                               "stall_ms_real": real["stall_ms_per_token"],
                               "stall_ms_emulate": e["stall_ms_per_token"],
                               "controller_cpu_ms_per_token": real["controller_cpu_ms_per_token"],
                               "worker_cpu_ms_per_token": real["worker_cpu_ms_per_token"],
                               "busy_idle_loop_cpu_ms_per_token":
                                   real["busy_idle_loop_cpu_ms_per_token"],
                               "busy_turnaround_ms_per_token":
                                   real["busy_turnaround_ms_per_token"],
                               "busy_turnaround_ms_per_pass": real["busy_turnaround_ms_per_pass"],
                               "identical": [r["token_ids"] for r in real["results"]]
                               == [r["token_ids"] for r in e["results"]]
                               == [r["token_ids"] for r in h["results"]]
                               == [r["token_ids"] for r in b["results"]],
                               "command": real["command"]}
                        rows.append(row)
                        print(f"{kind} {rtt:g} ms {policy}: TPOT {row['tpot_ms_real']:.2f} real / "
                              f"{row['tpot_ms_emulate']:.2f} emulated "
                              f"({100 * row['tpot_rel_diff']:+.1f}%; with host overhead "
                              f"{100 * row['tpot_rel_diff_host']:+.1f}%), busy passes/token "
                              f"{row['busy_real']:.3f} / {row['busy_emulate']:.3f}, CPU ms/token "
                              f"controller {row['controller_cpu_ms_per_token']:.2f}, worker "
                              f"{row['worker_cpu_ms_per_token']:.2f}, busy-site loop while "
                              f"its accelerator idled "
                              f"{row['busy_idle_loop_cpu_ms_per_token']:.2f}", file=sys.stderr)
                finally:
                    stop(proxy)
        finally:
            stop(worker)

    print("| transport | RTT | policy | TPOT real / emulate / +host / +host+stack | diff: "
          "emulate, +host, +host+stack | busy passes/token real / emulate / +host / +host+stack "
          "| target passes/token real / emulate / +host+stack | stall ms/token real / emulate | "
          "host CPU ms/token controller / worker | busy-site loop CPU ms/token, accelerator "
          "idle | busy-site turnaround ms/token (ms/pass) | identical |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['transport']} | {r['rtt_ms']:g} ms | {r['policy']} | {r['tpot_ms_real']:.2f} / "
              f"{r['tpot_ms_emulate']:.2f} / {r['tpot_ms_emulate_host_no_stack']:.2f} / "
              f"{r['tpot_ms_emulate_host']:.2f} ms | "
              f"{100 * r['tpot_rel_diff']:+.1f}%, {100 * r['tpot_rel_diff_host_no_stack']:+.1f}%, "
              f"{100 * r['tpot_rel_diff_host']:+.1f}% | "
              f"{r['busy_real']:.3f} / {r['busy_emulate']:.3f} / "
              f"{r['busy_emulate_host_no_stack']:.3f} / {r['busy_emulate_host']:.3f} | "
              f"{r['target_passes_real']:.3f} / {r['target_passes_emulate']:.3f} / "
              f"{r['target_passes_emulate_host']:.3f} | {r['stall_ms_real']:.2f} / "
              f"{r['stall_ms_emulate']:.2f} | {r['controller_cpu_ms_per_token']:.2f} / "
              f"{r['worker_cpu_ms_per_token']:.2f} | "
              f"{r['busy_idle_loop_cpu_ms_per_token']:.2f} | "
              f"{r['busy_turnaround_ms_per_token']:.3f} ({r['busy_turnaround_ms_per_pass']:.2f}) | "
              f"{'yes' if r['identical'] else 'NO'} |")
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip()
        args.json.write_text(json.dumps({
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "args": {k: str(v) for k, v in vars(args).items()}, "stack_ms_per_side": stack_ms,
            "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
