"""A worker on a CPU: the draft tree sized from measured pass times, or grown regardless.

On an accelerator a draft pass costs about the same for one sequence or hundreds, so a branch
lane of the draft tree is free.  On a CPU each lane adds its own compute to every pass (the
shipped draft: ~1 ms for one sequence, 4-7 ms for a main line and 16 branch lanes), which slows
every session's main line and burns the host's cores.  ``wanspec worker`` therefore grows branch
lanes only while its measured passes cost under twice what its main lines alone cost
(the default; ``--no-fit-trees`` turns it off; core/capacity.py).  This runs, for each setting, a real worker
process with *measured* timing (no ``--draft-ms`` floor: its passes take what the CPU takes) and,
per RTT (a ``wanspec delay-proxy``) and policy, a real ``wanspec controller --target-ms T
--draft-ms D --require-worker`` decoding held-out prompts one at a time, and reports per run:
TPOT, busy-site draft passes and stall per token, branch hits per token, host CPU per token at
each site, and the sequences the worker's fit allows a session's pass (its /health
``branch_seats``).  Every output must be identical to the other setting's (both are lossless).

    .venv/bin/python benchmarks/cpu_worker_trees.py --json benchmarks/results/cpu_worker_trees.json

Not a test: by hand, on a quiet machine (other work skews real time).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_server import WANSPEC, fail, listening, start, stop
from realtime_fidelity import held_out, real_run


def metrics_url(proc: subprocess.Popen[str], log: Path) -> str:
    """The worker's metrics address, from the line it prints after listening."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"worker metrics on (http://\S+)/metrics", line):
            return m.group(1)
    fail("the worker exited before serving its metrics", proc, log)
    raise AssertionError("unreachable")


SETTINGS = {"fitted": [], "full": ["--no-fit-trees"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtts", default="20,100", help="ms")
    ap.add_argument("--policies", default="remote,adaptive")
    ap.add_argument("--prompts", type=int, default=8, help="measured prompts (plus a warm-up)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--target-ms", type=float, default=30.0)
    ap.add_argument("--draft-ms", type=float, default=4.0, help="the busy site's draft floor")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--settings", default="fitted,full",
                    help="which worker settings, in this order (run twice, swapped, to see drift)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rtts = [float(x) for x in args.rtts.split(",")]
    policies = args.policies.split(",")

    _, prompts_file = held_out(args.prompts, args.logs / "cpu_worker_trees.prompts.jsonl")

    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for setting in args.settings.split(","):
        flag = SETTINGS[setting]
        wlog = args.logs / f"cpu_worker_trees.{setting}.worker.log"
        worker = start([*WANSPEC, "worker", "--listen", "127.0.0.1:0", "--metrics-port", "0", *flag,
                        *(["--threads", str(args.threads)] if args.threads else [])],
                       wlog, read_stdout=True)
        try:
            worker_addr = listening(worker, wlog, "worker")
            health = metrics_url(worker, wlog) + "/health"
            for rtt in rtts:
                proxy: subprocess.Popen[str] | None = None
                address = worker_addr
                try:
                    if rtt > 0:
                        plog = args.logs / "cpu_worker_trees.proxy.log"
                        proxy = start([*WANSPEC, "delay-proxy", "--listen", "127.0.0.1:0",
                                       "--to", worker_addr, "--rtt", f"{rtt:g}ms"],
                                      plog, read_stdout=True)
                        address = listening(proxy, plog, "delay proxy")
                    for policy in policies:
                        log = args.logs / f"cpu_worker_trees.{setting}.{policy}.log"
                        real = real_run(args, worker, address, "tcp", policy, prompts_file, [],
                                        log)
                        tokens = max(real["tokens"], 1)
                        hits = sum(r["metrics"].get("branch_hits", 0) for r in real["results"])
                        # what its fit allows one session now (max_batch until it is trusted)
                        seats = httpx.get(health, timeout=10).json()["branch_seats"]
                        row = {"setting": setting, "rtt_ms": rtt, "policy": policy,
                               "tpot_ms": real["tpot_ms"],
                               "busy_passes_per_token": real["busy_passes_per_token"],
                               "stall_ms_per_token": real["stall_ms_per_token"],
                               "branch_hits_per_token": hits / tokens,
                               "worker_branch_seats": seats,
                               "controller_cpu_ms_per_token": real["controller_cpu_ms_per_token"],
                               "worker_cpu_ms_per_token": real["worker_cpu_ms_per_token"],
                               "token_ids": [r["token_ids"] for r in real["results"]],
                               "command": real["command"]}
                        rows.append(row)
                        print(f"{setting} {rtt:g} ms {policy}: TPOT {row['tpot_ms']:.2f} ms, "
                              f"busy passes/token {row['busy_passes_per_token']:.3f}, branch "
                              f"hits/token {row['branch_hits_per_token']:.3f}, CPU ms/token "
                              f"controller {row['controller_cpu_ms_per_token']:.2f} worker "
                              f"{row['worker_cpu_ms_per_token']:.2f}, worker's seats for a "
                              f"session {seats}", file=sys.stderr)
                finally:
                    stop(proxy)
        finally:
            stop(worker)

    by = {(r["setting"], r["rtt_ms"], r["policy"]): r for r in rows}
    print("| RTT | policy | TPOT fitted / full (ms) | ratio | busy passes/token fitted / full | "
          "branch hits/token fitted / full | worker CPU ms/token fitted / full | controller "
          "CPU ms/token fitted / full | seats a session fitted / full | identical |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for rtt in rtts:
        for policy in policies:
            f, u = by["fitted", rtt, policy], by["full", rtt, policy]
            print(f"| {rtt:g} ms | {policy} | {f['tpot_ms']:.2f} / {u['tpot_ms']:.2f} | "
                  f"{f['tpot_ms'] / u['tpot_ms']:.3f} | {f['busy_passes_per_token']:.3f} / "
                  f"{u['busy_passes_per_token']:.3f} | {f['branch_hits_per_token']:.3f} / "
                  f"{u['branch_hits_per_token']:.3f} | {f['worker_cpu_ms_per_token']:.2f} / "
                  f"{u['worker_cpu_ms_per_token']:.2f} | {f['controller_cpu_ms_per_token']:.2f} / "
                  f"{u['controller_cpu_ms_per_token']:.2f} | {f['worker_branch_seats']} / "
                  f"{u['worker_branch_seats']} | "
                  f"{'yes' if f['token_ids'] == u['token_ids'] else 'NO'} |")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.platform(), "args": vars(args) | {
            "logs": str(args.logs), "json": str(args.json)}, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
