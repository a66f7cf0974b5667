"""Worker memory under load and abuse (issue 12: "memory stays bounded").

A real ``WorkerService`` (the shipped draft, fp32, CPU) served over loopback TCP in this process;
clients speak the protocol by hand.  Four phases, the worker's resident memory (RSS, from
/proc/self/status: tensors, allocator caches and Python objects alike) and open descriptors
measured after each:

1. ``sessions``: 4 connections x 64 sessions = 256 live sessions (the default ``--max-sessions``)
   with prompts of ``--prompt-tokens`` tokens, each drafting until it is at its lookahead; then
   every connection closed.
2. ``connections``: ``--connections`` connections opened at once, each sending Hello (past
   ``--max-connections`` they are refused as overloaded), then closed.
3. ``commits``: one session committed to its end and past it (the worker refuses the commit past
   the end and drops the session), repeated over ``--commit-sessions`` sessions.
4. ``after``: everything closed; the worker must hold no connection and no session.

    python scripts/memory_soak.py --json benchmarks/results/memory_soak.json

Prints the table recorded in docs/reliability.md.  A CI-sized run is
tests/scripts/test_memory_soak.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT
from wanspec.protocol.codec import PROTOCOL_VERSION, encode_frame
from wanspec.protocol.messages import Commit, Drafts, Hello, Ping, SessionStart
from wanspec.runtime.worker import WorkerService
from wanspec.transport import factory
from wanspec.transport.base import ConnectionClosed

LOOKAHEAD = 4


def rss_mb() -> float:
    """This process's resident memory, MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def hello(service: WorkerService) -> Hello:
    return Hello(PROTOCOL_VERSION, "controller", "memory-soak", service.fingerprint,
                 service.draft.vocab_size)


async def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def phase_sessions(service: WorkerService, address: str, connections: int,
                         per_connection: int, prompt_tokens: int, timeout: float
                         ) -> dict[str, Any]:
    """Many long sessions at once: each drafts to its lookahead; then every connection closes."""
    conns = [await factory.connect("tcp", address, timeout=10.0) for _ in range(connections)]
    drafted: set[tuple[int, int]] = set()
    readers = []
    for c_index, conn in enumerate(conns):
        await conn.send(hello(service))
        await conn.recv()  # the worker's Hello
        for s in range(per_connection):
            prompt = tuple((c_index * 131 + s * 7 + i) % 500 + 3 for i in range(prompt_tokens))
            await conn.send(SessionStart(rid=s + 1, prompt=prompt, lookahead=LOOKAHEAD,
                                         max_position=prompt_tokens + 64))

        async def read(conn: Any = conn, c_index: int = c_index) -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    msg = await conn.recv()
                    if isinstance(msg, Drafts):
                        drafted.add((c_index, msg.rid))

        async def ping(conn: Any = conn) -> None:  # an honest controller pings every second
            with contextlib.suppress(ConnectionClosed):
                for seq in range(1, 1 << 30):
                    await asyncio.sleep(1.0)
                    await conn.send(Ping(time.monotonic(), seq))

        readers += [asyncio.create_task(read()), asyncio.create_task(ping())]
    want = connections * per_connection
    all_drafted = await _wait_for(lambda: len(drafted) >= want, timeout)
    await asyncio.sleep(1.0)  # let every session reach its lookahead
    live = sum(len(core.sessions) for core in service.active)
    peak = rss_mb()
    for conn in conns:
        await conn.close()
    for r in readers:
        r.cancel()
    await _wait_for(lambda: not service.active, 10.0)
    gc.collect()
    return {"sessions": live, "all_drafted": all_drafted, "rss_mb_with_sessions": peak,
            "rss_mb_after_close": rss_mb(), "open_after_close": len(service.active)}


async def phase_connections(service: WorkerService, address: str, n: int) -> dict[str, Any]:
    """``n`` connections at once, each introducing itself; the worker serves its cap and refuses
    the rest; then all close."""
    host, port = factory.parse_address(address)
    writers = []
    fds_before = open_fds()
    frame = encode_frame(hello(service))
    for i in range(n):
        try:
            _, w = await asyncio.open_connection(host, port)
        except OSError:
            break
        w.write(frame)
        writers.append(w)
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the worker accept them
    await asyncio.sleep(1.0)
    opened, peak, served = len(writers), rss_mb(), len(service.active)
    for w in writers:
        w.close()
    await _wait_for(lambda: not service.active, 10.0)
    await asyncio.sleep(0.5)
    gc.collect()
    return {"opened": opened, "served_at_once": served, "rss_mb_with_connections": peak,
            "rss_mb_after_close": rss_mb(), "fds_leaked": open_fds() - fds_before}


async def phase_commits(service: WorkerService, address: str, sessions: int,
                        prompt_tokens: int) -> dict[str, Any]:
    """Commits up to each session's end, then one past it: refused, the session dropped."""
    conn = await factory.connect("tcp", address, timeout=10.0)
    await conn.send(hello(service))
    await conn.recv()
    refused = 0
    end = prompt_tokens + 64
    for rid in range(1, sessions + 1):
        prompt = tuple((rid + i) % 500 + 3 for i in range(prompt_tokens))
        await conn.send(SessionStart(rid=rid, prompt=prompt, lookahead=LOOKAHEAD,
                                     max_position=end))
        base = prompt_tokens
        while base < end:  # commit to the end, 16 tokens at a time
            await conn.send(Commit(rid, 0, base, tuple(range(3, 19))))
            base += 16
        await conn.send(Commit(rid, 0, base, tuple(range(3, 10003))))  # past the end
    deadline = time.monotonic() + 30.0
    with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
        while refused < sessions and time.monotonic() < deadline:
            msg = await asyncio.wait_for(conn.recv(), 5.0)
            if type(msg).__name__ == "Error":
                refused += 1
    live = sum(len(core.sessions) for core in service.active)
    peak = rss_mb()
    await conn.close()
    await _wait_for(lambda: not service.active, 10.0)
    gc.collect()
    return {"sessions": sessions, "refused_past_end": refused, "live_after": live,
            "rss_mb_during": peak, "rss_mb_after_close": rss_mb()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    lm = CausalLM(DEFAULT_DRAFT, dtype="float32", device="cpu", name="draft")
    service = WorkerService(lm)
    server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
    address = "127.0.0.1:%d" % server.address[1]
    try:
        # one short session first: the model, its pool and the allocator warmed up
        await phase_sessions(service, address, 1, 1, 16, 30.0)
        gc.collect()
        report: dict[str, Any] = {"rss_mb_baseline": rss_mb(), "fds_baseline": open_fds()}
        report["sessions"] = await phase_sessions(service, address, args.session_connections,
                                                  args.sessions_per_connection,
                                                  args.prompt_tokens, args.timeout)
        report["connections"] = await phase_connections(service, address, args.connections)
        report["commits"] = await phase_commits(service, address, args.commit_sessions,
                                                args.prompt_tokens)
        gc.collect()
        report["after"] = {"rss_mb": rss_mb(), "open_connections": len(service.active),
                           "live_sessions": sum(len(c.sessions) for c in service.active),
                           "fds": open_fds()}
        return report
    finally:
        await server.close()
        lm.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--session-connections", type=int, default=4)
    ap.add_argument("--sessions-per-connection", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=1900)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--commit-sessions", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds for every session's first draft")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # (each refused connection is a worker warning)
    t0 = time.monotonic()
    report = asyncio.run(run(args))
    report["args"] = vars(args) | {"json": str(args.json) if args.json else None}
    report["wall_s"] = time.monotonic() - t0
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
