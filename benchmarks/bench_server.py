"""The real server under load on loopback: `wanspec worker` + `wanspec controller --listen`,
measured from outside with `wanspec bench` (the table of docs/results.md next to the emulated
load results).

Starts a worker and an OpenAI-compatible controller as subprocesses on 127.0.0.1 (free ports),
waits until the controller answers GET /v1/models, sends a few warm-up requests, then runs the
bench at each concurrency (closed loop; 1, 8, 32 by default) with the same client code as
`wanspec bench`, and writes every summary as JSON with the commit and the exact commands.
Prints a Markdown table.  The RTT is loopback's (~0.1 ms): for a WAN, run the worker elsewhere
or add delay with `tc netem` and give --worker-addr.  Not a test: by hand, on a quiet machine.

    .venv/bin/python benchmarks/bench_server.py --json benchmarks/results/bench_server.json

Needs `wanspec controller --listen HOST:PORT --worker HOST:PORT` (the OpenAI server of issue
13); without it the script stops at once and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
WANSPEC = [sys.executable, "-m", "wanspec"]
READY_S = 300.0  # model loading on a slow CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_listen_flag() -> None:
    """Stop with a clear message when this wanspec has no OpenAI server."""
    out = subprocess.run([*WANSPEC, "controller", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}, timeout=120)
    if "--listen" not in out.stdout:
        sys.exit("bench_server: `wanspec controller` has no --listen flag in this checkout; the "
                 "OpenAI-compatible server (issue 13) is needed. Nothing was measured.")


def start(args: list[str], log: Path, read_stdout: bool = False) -> subprocess.Popen[str]:
    """Start a site in its own process group; its output goes to ``log`` (stdout is piped only
    when its first line is needed: a full pipe would stall a chatty server)."""
    print("$", " ".join(args[2:]), file=sys.stderr)
    out = log.open("w")
    return subprocess.Popen(args, stdout=subprocess.PIPE if read_stdout else out, stderr=out,
                            text=True, cwd=ROOT, start_new_session=True)


def stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def fail(what: str, proc: subprocess.Popen[str], log: Path) -> None:
    tail = log.read_text(errors="replace").strip().splitlines()[-15:]
    sys.exit(f"bench_server: {what} (exit code {proc.poll()}); its log ({log}) ends:\n"
             + "\n".join(tail))


def listening(proc: subprocess.Popen[str], log: Path, what: str = "worker") -> str:
    """HOST:PORT once ``proc`` prints `... listening on tcp|quic|udp://HOST:PORT` (the worker and
    `wanspec delay-proxy` do, once ready)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            fail(f"the {what} exited before listening", proc, log)
        if m := re.search(r"listening on (?:tcp|quic|udp)://(\S+:\d+)", line):
            return m.group(1)
    fail(f"the {what} did not listen in time", proc, log)
    raise AssertionError("unreachable")


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail("the controller exited before serving", proc, log)
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    fail("the controller did not answer GET /v1/models in time", proc, log)


def bench(url: str, concurrency: int, args: argparse.Namespace, num_prompts: int) -> dict[str, Any]:
    from wanspec.bench.runner import run_bench, summarize
    from wanspec.cli.bench import bench_config

    cfg = bench_config(url=url, chat=False, concurrency=concurrency, request_rate=None,
                       prompts=args.prompts, num_prompts=num_prompts, max_tokens=args.max_tokens,
                       model=None, api_key=None, seed=0, temperature=0.0,
                       ignore_eos=args.ignore_eos,
                       timeout=args.timeout, slo_tpot=args.slo_tpot, slo_ttft=None)
    return summarize(asyncio.run(run_bench(cfg)))


def markdown(runs: list[dict[str, Any]]) -> str:
    rows = ["| clients | req/s | output tok/s | goodput tok/s | TTFT p50 / p95 | "
            "TPOT p50 / p95 | ITL p50 / p95 | E2E p50 | failed |",
            "|---|---|---|---|---|---|---|---|---|"]

    def pair(s: dict[str, Any], m: str) -> str:
        a, b = s[f"{m}_ms_p50"], s[f"{m}_ms_p95"]
        return "-" if a is None else f"{a:.1f} / {b:.1f} ms"

    for s in runs:
        rows.append(f"| {s['concurrency']} | {s['request_throughput']:.2f} | "
                    f"{s['output_throughput_tok_s']:.1f} | {s['goodput_tok_s']:.1f} | "
                    f"{pair(s, 'ttft')} | {pair(s, 'tpot')} | {pair(s, 'itl')} | "
                    f"{s['e2e_ms_p50']:.0f} ms | {s['failed']} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--num-prompts", type=int, default=64, help="requests per concurrency")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=Path,
                    default=ROOT / "src/wanspec/assets/prompts/heldout_large.jsonl")
    ap.add_argument("--slo-tpot", default="50ms")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                    help="ask for exactly --max-tokens tokens per request (vLLM's extension)")
    ap.add_argument("--warmup", type=int, default=2, help="requests sent first, not measured")
    ap.add_argument("--worker-arg", action="append", default=[],
                    help="extra argument for `wanspec worker` (repeatable), e.g. --draft-ms=4")
    ap.add_argument("--controller-arg", action="append", default=[],
                    help="extra argument for `wanspec controller` (repeatable)")
    ap.add_argument("--logs", type=Path, default=Path("/tmp"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    require_listen_flag()
    worker = controller = None
    wlog, clog = args.logs / "bench_server.worker.log", args.logs / "bench_server.controller.log"
    try:
        worker_cmd = [*WANSPEC, "worker", "--listen", "127.0.0.1:0", *args.worker_arg]
        worker = start(worker_cmd, wlog, read_stdout=True)
        worker_addr = listening(worker, wlog)
        listen = f"127.0.0.1:{free_port()}"
        controller_cmd = [*WANSPEC, "controller", "--listen", listen, "--worker", worker_addr,
                          *args.controller_arg]
        controller = start(controller_cmd, clog)
        url = f"http://{listen}"
        wait_ready(url, controller, clog)
        if args.warmup:
            bench(url, 1, args, args.warmup)
        runs = []
        for c in levels:
            s = bench(url, c, args, args.num_prompts)
            runs.append(s)
            print(f"c={c}: {s['output_throughput_tok_s']:.1f} tok/s, TPOT p50 "
                  f"{s['tpot_ms_p50'] or 0:.1f} ms, {s['failed']} failed", file=sys.stderr)
    finally:
        stop(controller)
        stop(worker)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    record = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
              "worker": " ".join(worker_cmd[2:]), "controller": " ".join(controller_cmd[2:]),
              "bench": {"num_prompts": args.num_prompts, "max_tokens": args.max_tokens,
                        "prompts": str(args.prompts), "ignore_eos": args.ignore_eos, "temperature": 0.0,
                        "slo_tpot": args.slo_tpot, "warmup": args.warmup},
              "runs": runs}
    print(markdown(runs))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
