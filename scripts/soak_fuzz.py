"""``scripts/soak.py fuzz``: mutated frames into a live worker and the controller's sans-I/O side
(see that script's docstring and docs/reliability.md).  The frames: ``soak_frames.py``; the
controller's side: ``soak_fuzz_controller.py``; the live worker and the run: here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
import tracemalloc
from dataclasses import asdict
from typing import Any

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.protocol.codec import encode_frame
from wanspec.protocol.messages import Hello, Message, SessionStart
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.transport import factory
from wanspec.transport.base import Connection

from soak_common import PROMPTS, REFERENCE_TOKENS, SAMPLINGS, Pair
from soak_frames import MUTATORS, controller_message, stream
from soak_fuzz_controller import fuzz_controller


# ---- the live worker, over loopback TCP ---------------------------------------------------------


def _distinct(records: list[str], keep: int = 20) -> list[str]:
    """The first ``keep`` distinct crashes, by their last line (the exception)."""
    seen: dict[str, str] = {}
    for r in records:
        seen.setdefault(r.strip().splitlines()[-1] if r.strip() else r, r)
    return list(seen.values())[:keep]


class _CrashLog(logging.Handler):
    """Counts what a server logs at ERROR or above (run_handler logs a handler's exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def _fuzz_connection(rng: random.Random, port: int, hello: Hello,
                           counts: dict[str, int]) -> int:
    """One connection: (usually) a valid Hello and SessionStart, then frames until one breaks
    the stream; read what comes back until the worker closes or goes quiet.  Returns the
    mutated frames the worker read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rid = rng.randrange(1, 6)
    position = 0
    prefix: list[bytes] = []
    if rng.random() < 0.9:
        prefix.append(encode_frame(hello))
        if rng.random() < 0.8:
            start = controller_message(rng, rid, 0)
            while not isinstance(start, SessionStart):
                start = controller_message(rng, rid, 0)
            prefix.append(encode_frame(start))
            position = len(start.prompt)

    def message() -> Message:
        return controller_message(rng, rid, position)

    data, mutated, broken = stream(rng, message, rng.randint(1, 40), counts)

    async def drain() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(1 << 16):
                pass

    reading = asyncio.create_task(drain())
    try:
        payload = b"".join(prefix) + data
        at = 0
        while at < len(payload):
            cut = at + rng.randint(1, 4096)
            writer.write(payload[at:cut])
            await writer.drain()
            at = cut
        # a refused frame: the worker closes at once; else leave it a moment to answer (or to
        # wait for the rest of a frame that never comes), then hang up on it
        await asyncio.wait_for(asyncio.shield(reading), 2.0 if broken == "refused" else
                               rng.choice([0.0, 0.0, 0.002, 0.02]))
    except (asyncio.TimeoutError, ConnectionError, OSError):
        pass
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return mutated


async def _fuzz_worker(pair: Pair, frames: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"wanspec-soak-fuzz-worker:{seed}")
    crash_log = _CrashLog()
    loggers = [logging.getLogger(n) for n in ("wanspec.transport", "wanspec.worker", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # (whatever the root logger's level: errors must be seen)
        lg.addHandler(crash_log)
        lg.setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    task_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: task_errors.append(str(ctx.get("message"))
                                                                      + repr(ctx.get("exception"))))
    draft = pair.draft.sibling("fuzzed-worker")
    service = WorkerService(draft)
    server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
    port = server.address[1]
    counts = {m: 0 for m in MUTATORS}
    sent = connections = 0
    memory: list[float] = []
    t0 = time.monotonic()
    try:
        while sent < frames:
            sent += await _fuzz_connection(rng, port, service.hello(), counts)
            connections += 1
            if connections % 1000 == 0:
                memory.append(tracemalloc.get_traced_memory()[0] / 1e6)
        # the fuzzed connections are all gone: the worker must hold nothing for them
        for _ in range(200):
            if not service.active:
                break
            await asyncio.sleep(0.01)
        leaked_sessions = sum(len(c.sessions) for c in service.active)
        open_connections = len(service.active)
        fuzz_wall = time.monotonic() - t0
        # and it still serves a real controller exactly
        after = await _real_controller(pair, port)
    finally:
        await server.close()
        draft.close()
        for lg, level in zip(loggers, levels):
            lg.removeHandler(crash_log)
            lg.setLevel(level)
    gc.collect()
    return {"frames": sent, "connections": connections, "by_mutator": counts,
            "crashes": len(crash_log.records) + len(task_errors),
            "crash_records": _distinct(crash_log.records + task_errors),
            "open_connections_after": open_connections, "sessions_after": leaked_sessions,
            "worker_totals": asdict(service.totals), "traced_mb_samples": memory,
            "wall_s": fuzz_wall, "afterwards": after}


AFTER_TOKENS = REFERENCE_TOKENS  # the real controller's requests after the fuzzing


async def _real_controller(pair: Pair, port: int) -> dict[str, Any]:
    """A real controller, greedy and sampled, against the fuzzed worker: identical output?"""
    async def connector() -> Connection:
        return await factory.connect("tcp", f"127.0.0.1:{port}", timeout=2.0)

    out: dict[str, Any] = {}
    for name in SAMPLINGS:
        link = WorkerLink(connector, RemoteEngine.hello_for(pair.target), hello_timeout=5.0)
        engine = RemoteEngine(pair.target, link,
                              config=ControllerConfig(policy=PolicyConfig(PolicyName.REMOTE)))
        try:
            r = await asyncio.wait_for(engine.agenerate(PROMPTS[0], max_tokens=AFTER_TOKENS,
                                                        sampling=SAMPLINGS[name],
                                                        ignore_eos=True), 60.0)
        finally:
            await link.close()
        out[name] = {"identical": r.token_ids == pair.reference(PROMPTS[0], name, AFTER_TOKENS),
                     "worker_used": bool(r.metrics["worker_used"]),
                     "worker_lost": r.metrics["worker_lost"],
                     "remote_drafts_accepted": r.metrics["remote_drafts_accepted"]}
    return out


def soak_fuzz(pair: Pair, frames: int, seed: int, controller_frames: int | None = None
              ) -> dict[str, Any]:
    """``frames`` mutated frames into the live worker, as many into the controller's side."""
    pair.prepare((PROMPTS[0], name) for name in SAMPLINGS)
    tracemalloc.start()
    t0 = time.monotonic()
    worker = asyncio.run(_fuzz_worker(pair, frames, seed))
    _, worker_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t1 = time.monotonic()
    controller = fuzz_controller(controller_frames if controller_frames is not None else frames,
                                 seed)
    controller["wall_s"] = time.monotonic() - t1
    current, controller_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = worker["afterwards"]
    return {
        "kind": "fuzz", "seed": seed, "worker": worker, "controller": controller,
        "traced_peak_mb": {"worker_run": worker_peak / 1e6,
                           "controller_run": (controller_peak - base) / 1e6},
        "crashes": worker["crashes"] + controller["crashes"],
        "hangs": controller["hangs"], "divergences": controller["divergences"] + sum(
            not v["identical"] for v in after.values()),
        "worker_serves_identically_afterwards": all(v["identical"] and v["worker_used"]
                                                    and not v["worker_lost"]
                                                    for v in after.values()),
        "wall_s": time.monotonic() - t0,
    }
