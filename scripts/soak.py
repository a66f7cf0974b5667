"""Soak runs of issue 12 ("trust nothing from the network"): fault schedules and frame fuzzing.

``faults``: randomized fault schedules on the virtual clock.  Each schedule draws a link (RTT,
jitter, delay spikes), a policy, greedy or seeded sampling, a few requests (one after another
or at once) and faults at random virtual times: the worker process killed and restarted, its
connection reset (the worker lives on), the worker stalled (it neither reads nor sends), and
RTT spikes (its messages held back).  A quarter of the schedules give the controller two workers
and a quarter three (each with its own RTT, each fault hitting one of them): requests are placed
on one and move to another when theirs fails.  Every request's output must equal target-only
decoding, and every schedule must end within a virtual-time and a wall-time bound.

``fuzz``: mutated frames (bit flips, truncation, extension, field-type swaps, arity changes,
length lies, random msgpack, random bytes, splices) fed (1) to a live worker over loopback TCP,
in many connections, and (2) to the controller's sans-I/O side -- ``FrameDecoder``, ``LinkCore``
and a ``ControllerCore`` verifying against a synthetic target.  No crash (an exception out of a
handler, a core or an asyncio task), bounded memory (tracemalloc peak and growth, decoder
buffers, chain lengths), every core-side request lossless; afterwards a real controller gets
the target's own output from the fuzzed worker.

    python scripts/soak.py faults --schedules 1000 --seed 1 --json faults.json
    python scripts/soak.py fuzz --frames 100000 --seed 1 --json fuzz.json

Both are seed-reproducible (``--only N`` reruns schedule N of a seed).  The exit status is 0
only if nothing was found.  The CI-sized runs are tests/scripts/test_soak_*.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import random
import struct
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import msgpack

from wanspec.core.actions import (
    DraftDone,
    RunDraft,
    RunTarget,
    Send,
    TargetDone,
)
from wanspec.core.controller import ControllerConfig, ControllerCore
from wanspec.core.estimates import Estimates
from wanspec.core.link import LinkCore, Route
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.rounds import RoundFeed, run_rounds
from wanspec.core.stopping import StopCriteria
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.protocol.codec import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from wanspec.protocol.messages import (
    Cancel,
    Commit,
    Drafts,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
    bundle_drafts,
)
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import LocalEngine, TimingConfig
from wanspec.runtime.worker import WorkerService
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport import factory
from wanspec.transport.base import Connection, ConnectionClosed
from wanspec.transport.inproc import InprocConnection, LinkParams, inproc_pair

PROMPTS = (
    "To be, or not to be, that is",
    "Now is the winter of our discontent",
    "Friends, Romans, countrymen, lend me",
    "All the world's a stage, and all the",
    "The quality of mercy is not strained;",
    "Once more unto the breach, dear friends,",
)
SAMPLINGS = {"greedy": SamplingParams(), "sampled": SamplingParams(temperature=0.8, top_p=0.95,
                                                                   seed=7)}
POLICIES = ("remote", "always", "entropy", "adaptive")
REFERENCE_TOKENS = 32
TIMING = TimingConfig.emulate(30, 4)  # target / draft pass costs (ms) on the virtual clock


# ---- the shipped pair and target-only references -----------------------------------------------


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread: as fast for these tiny models, and it never oversubscribes a
    shared machine (two threads per process made every pass several times slower there)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Pair:
    """The shipped pair in fp32 on the CPU, and target-only outputs, computed once each."""

    def __init__(self) -> None:
        self.target = CausalLM(DEFAULT_TARGET, dtype="float32", device="cpu", name="target")
        self.draft = CausalLM(DEFAULT_DRAFT, dtype="float32", device="cpu", name="draft")
        self._engine = LocalEngine(self.target, timing=TIMING)
        self._refs: dict[tuple[str, str], list[int]] = {}

    def prepare(self, keys: Iterable[tuple[str, str]]) -> None:
        """Compute the references of ``(prompt, sampling)`` now: not inside a running loop."""
        for prompt, sampling in keys:
            self.reference(prompt, sampling, REFERENCE_TOKENS)

    def reference(self, prompt: str, sampling: str, max_tokens: int) -> list[int]:
        """Target-only output; EOS ignored, so a shorter request's is a prefix of a longer's
        (sampling noise is keyed by position)."""
        key = (prompt, sampling)
        ref = self._refs.get(key)
        if ref is None or len(ref) < max_tokens:
            ref = self._refs[key] = self._engine.generate(
                prompt, mode="target", max_tokens=max(max_tokens, REFERENCE_TOKENS),
                sampling=SAMPLINGS[sampling], ignore_eos=True).token_ids
        return ref[:max_tokens]

    def close(self) -> None:
        self.target.close()
        self.draft.close()


# ==== faults =====================================================================================


@dataclass(frozen=True)
class Fault:
    """``kill``: the worker process dies, and is back after ``duration``; ``reset``: its
    connections are cut (it lives on); ``stall``: it neither reads nor sends for ``duration``;
    ``spike``: for ``duration`` its messages take ``extra_ms`` longer (in order)."""

    kind: str
    at: float  # virtual seconds after the schedule starts
    duration: float
    extra_ms: float = 0.0
    worker: int = 0  # which of the schedule's workers it hits


@dataclass(frozen=True)
class Request:
    prompt: int  # index into PROMPTS
    max_tokens: int


@dataclass(frozen=True)
class Schedule:
    index: int
    link: LinkParams
    policy: str
    local_draft: bool
    gamma: int
    sampling: str
    concurrent: bool  # the requests run at once (batched) rather than one after another
    requests: tuple[Request, ...]
    faults: tuple[Fault, ...]
    # the RTT of each worker after the first (several workers: each request is placed on one and
    # moves to another when it fails); () for one worker
    more_workers_rtt_ms: tuple[float, ...] = ()

    @property
    def workers(self) -> int:
        return 1 + len(self.more_workers_rtt_ms)


def make_schedule(seed: int, index: int) -> Schedule:
    """Schedule ``index`` of ``seed``: the same on every machine and run."""
    rng = random.Random(f"wanspec-soak-faults:{seed}:{index}")
    link = LinkParams(rtt_ms=rng.choice([1.0, 10.0, 30.0, 80.0, 200.0]) * rng.uniform(0.5, 1.5),
                      jitter_ms=rng.choice([0.0, 0.0, 5.0, 20.0]),
                      spike_prob=rng.choice([0.0, 0.0, 0.05, 0.2]),
                      spike_ms=rng.uniform(50.0, 800.0), seed=rng.randrange(1 << 16))
    policy = rng.choice(POLICIES)
    local = policy != "remote" and rng.random() < 0.8
    requests = tuple(Request(rng.randrange(len(PROMPTS)), rng.randrange(4, 33))
                     for _ in range(rng.randint(1, 3)))
    horizon = 0.04 * sum(r.max_tokens for r in requests) + link.rtt_ms / 1000.0
    faults = []
    for _ in range(rng.choice([0, 1, 1, 2, 3, 4])):
        kind = rng.choice(["kill", "reset", "stall", "spike"])
        faults.append(Fault(kind, round(rng.uniform(0.0, horizon), 4),
                            round(rng.choice([0.01, 0.1, 0.5, 2.0, 15.0]) * rng.random(), 4),
                            round(rng.uniform(50.0, 2000.0), 1) if kind == "spike" else 0.0))
    gamma, sampling, concurrent = rng.randint(1, 6), rng.choice(list(SAMPLINGS)), rng.random() < 0.4
    # drawn last, so that a schedule's single-worker part is what it always was
    workers = rng.choice([1, 1, 2, 3])
    more_rtt = tuple(round(rng.choice([1.0, 10.0, 30.0, 80.0, 200.0]) * rng.uniform(0.5, 1.5), 3)
                     for _ in range(workers - 1))
    faults = [replace(f, worker=rng.randrange(workers)) if workers > 1 else f for f in faults]
    return Schedule(index, link, policy, local, gamma, sampling, concurrent, requests,
                    tuple(sorted(faults, key=lambda f: f.at)), more_rtt)


class FaultyEnd(Connection):
    """The worker's end of a link, through the schedule's stalls and delay spikes.

    Sends keep their order: each leaves at ``max(its release, the previous one's)``, where a
    stall releases it when the stall ends and a spike adds its extra delay.  A stalled worker
    reads nothing either: a message is handed over only once the stall has ended.
    """

    def __init__(self, inner: InprocConnection, world: "FaultyWorker") -> None:
        self.inner, self.world = inner, world
        self.peer = inner.peer
        self._queue: asyncio.Queue[tuple[float, Message]] = asyncio.Queue()
        self._last_release = 0.0
        self._sender: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def send(self, msg: Message) -> None:
        if self.inner.closed:
            raise ConnectionClosed("closed")
        now = asyncio.get_running_loop().time()
        release = max(self.world.release_time(now), self._last_release)
        if release <= now and self._queue.empty():
            await self.inner.send(msg)
            return
        self._last_release = release
        self._queue.put_nowait((release, msg))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_later())

    async def _send_later(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                release, msg = await self._queue.get()
                await clock.sleep_until(release)
                await self.inner.send(msg)

    async def recv(self) -> Message:
        msg = await self.inner.recv()
        loop = asyncio.get_running_loop()
        await clock.sleep_until(self.world.stall_end(loop.time()))
        return msg

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        await self.inner.close()


class FaultyWorker:
    """One worker site of a schedule behind its own in-process link, with its faults applied."""

    def __init__(self, pair: Pair, link: LinkParams, name: str) -> None:
        self.link_params = link
        self.alive = True
        self.windows: list[tuple[str, float, float, float]] = []  # (kind, start, end, extra s)
        self.draft = pair.draft.sibling(f"soak-{name}")
        self.service = WorkerService(self.draft, cost=TIMING.draft)
        self.ends: list[InprocConnection] = []
        self.handlers: list[asyncio.Task[None]] = []
        self.connections = 0
        self._seed = link.seed

    async def connect(self) -> Connection:
        if not self.alive:
            raise ConnectionClosed("worker is down")
        self._seed += 1
        ours, theirs = inproc_pair(LinkParams(**{**self.link_params.__dict__, "seed": self._seed}))
        self.ends += [ours, theirs]
        self.connections += 1
        self.handlers.append(asyncio.create_task(self.service.handle(FaultyEnd(theirs, self))))
        return ours

    def release_time(self, now: float) -> float:
        t = now
        for kind, start, end, extra in self.windows:
            if start <= now < end:
                t = max(t, end if kind == "stall" else now + extra)
        return t

    def stall_end(self, now: float) -> float:
        return max([end for kind, start, end, _ in self.windows
                    if kind == "stall" and start <= now < end], default=now)

    def cut(self) -> None:
        for end in self.ends:
            end.kill()
        self.ends.clear()

    def apply(self, f: Fault, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        if f.kind == "kill":
            self.alive = False
            self.cut()
            loop.call_at(now + f.duration, setattr, self, "alive", True)
        elif f.kind == "reset":
            self.cut()
        else:
            self.windows.append((f.kind, now, now + f.duration, f.extra_ms / 1000.0))

    async def close(self) -> None:
        for end in self.ends:
            await end.close()
        for t in self.handlers:
            t.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        self.draft.close()


class FaultyWorld:
    """A controller and its worker(s) over in-process links, with the schedule's faults."""

    def __init__(self, pair: Pair, s: Schedule) -> None:
        self.s = s
        links = [s.link, *(replace(s.link, rtt_ms=rtt, seed=s.link.seed + 1000 * (i + 1))
                           for i, rtt in enumerate(s.more_workers_rtt_ms))]
        self.workers = [FaultyWorker(pair, link, f"worker{i}") for i, link in enumerate(links)]
        self.local = pair.draft.sibling("soak-local") if s.local_draft else None
        self.links = [WorkerLink(w.connect, RemoteEngine.hello_for(pair.target),
                                 hello_timeout=2.0, backoff=(0.05, 0.5),
                                 rtt_prior_s=max(w.link_params.rtt_ms, 1.0) / 1000.0,
                                 name=f"worker{i}")
                      for i, w in enumerate(self.workers)]
        config = ControllerConfig(gamma=s.gamma, policy=PolicyConfig(PolicyName(s.policy)))
        self.engine = RemoteEngine(pair.target, self.links, local_draft=self.local,
                                   timing=TIMING, config=config)

    @property
    def connections(self) -> int:
        return sum(w.connections for w in self.workers)

    def apply(self, f: Fault, loop: asyncio.AbstractEventLoop) -> None:
        self.workers[f.worker].apply(f, loop)

    async def close(self) -> None:
        assert self.engine.workers is not None
        await self.engine.workers.close()
        for w in self.workers:
            await w.close()
        if self.local is not None:
            self.local.close()


@dataclass
class ScheduleResult:
    index: int
    ok: bool
    divergent: list[int] = field(default_factory=list)  # request numbers whose output differed
    hung: str | None = None
    error: str | None = None
    virtual_s: float = 0.0
    wall_s: float = 0.0
    worker_used: int = 0
    worker_lost: int = 0
    worker_moves: int = 0  # (several workers) moves of a request to another worker
    connections: int = 0


def virtual_bound(s: Schedule) -> float:
    """The virtual time a schedule may take: every token at 4 plain target passes' cost, each
    fault's duration, and two handshake timeouts per request, plus a margin."""
    tokens = sum(r.max_tokens + 1 for r in s.requests)
    faults = sum(f.duration + 2 * f.extra_ms / 1000.0 for f in s.faults)
    return 4 * 0.030 * tokens + faults + 2 * 2.0 * len(s.requests) + 10.0


def run_schedule(pair: Pair, s: Schedule, wall_limit_s: float = 60.0) -> ScheduleResult:
    """Run one schedule on a fresh virtual-time loop, under both bounds."""
    pair.prepare((PROMPTS[r.prompt], s.sampling) for r in s.requests)
    result = ScheduleResult(s.index, ok=False)
    outputs: list[list[int] | None] = [None] * len(s.requests)
    t0 = time.monotonic()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        world = FaultyWorld(pair, s)
        start = loop.time()
        for f in s.faults:
            loop.call_at(start + f.at, world.apply, f, loop)

        async def one(i: int, r: Request) -> None:
            res = await world.engine.agenerate(PROMPTS[r.prompt], max_tokens=r.max_tokens,
                                               sampling=SAMPLINGS[s.sampling], ignore_eos=True)
            outputs[i] = res.token_ids
            result.worker_used += bool(res.metrics["worker_used"])
            result.worker_lost += bool(res.metrics["worker_lost"])
            result.worker_moves += res.metrics["worker_moves"]

        try:
            if s.concurrent:
                await asyncio.wait_for(asyncio.gather(*(one(i, r) for i, r in
                                                        enumerate(s.requests))),
                                       virtual_bound(s))
            else:
                async def serial() -> None:
                    for i, r in enumerate(s.requests):
                        await one(i, r)

                await asyncio.wait_for(serial(), virtual_bound(s))
        except asyncio.TimeoutError:
            result.hung = f"past the virtual bound of {virtual_bound(s):.1f} s"
        finally:
            result.virtual_s = loop.time() - start
            result.connections = world.connections
            await world.close()

    watchdog = _Watchdog(wall_limit_s)
    try:
        clock.run(lambda: watchdog.guard(main()), virtual=True)
    except asyncio.CancelledError:
        result.hung = f"past the wall-time bound of {wall_limit_s:g} s"
    except Exception as exc:  # a crash of the controller or worker: what the soak looks for
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        watchdog.stop()
    result.wall_s = time.monotonic() - t0
    for i, r in enumerate(s.requests):
        got = outputs[i]
        if got is not None and got != pair.reference(PROMPTS[r.prompt], s.sampling, r.max_tokens):
            result.divergent.append(i)
    if result.hung is None and result.error is None and None in outputs:
        result.error = "a request did not return"
    result.ok = not (result.divergent or result.hung or result.error)
    return result


class _Watchdog:
    """Cancels the guarded coroutine when its wall time runs out, from a thread: a loop that
    never idles never lets virtual time (and so a virtual timeout) advance."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._timer: threading.Timer | None = None

    async def guard(self, coro: Any) -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(coro)
        self._timer = threading.Timer(self.limit_s, loop.call_soon_threadsafe, (task.cancel,))
        self._timer.daemon = True
        self._timer.start()
        return await task

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def soak_faults(pair: Pair, schedules: int, seed: int, only: int | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    indices = [only] if only is not None else list(range(schedules))
    results, faults, t0 = [], {"kill": 0, "reset": 0, "stall": 0, "spike": 0}, time.monotonic()
    requests = 0
    for n, i in enumerate(indices):
        s = make_schedule(seed, i)
        for f in s.faults:
            faults[f.kind] += 1
        requests += len(s.requests)
        r = run_schedule(pair, s)
        results.append(r)
        if not r.ok and progress:
            progress(f"schedule {i}: {asdict(r)}\n  {s}")
        if progress and (n + 1) % 50 == 0:
            progress(f"{n + 1}/{len(indices)} schedules, {time.monotonic() - t0:.0f} s")
    bad = [r for r in results if not r.ok]
    return {
        "kind": "faults", "seed": seed, "schedules": len(results), "requests": requests,
        "faults": faults, "divergences": sum(len(r.divergent) for r in results),
        "hangs": sum(r.hung is not None for r in results),
        "errors": sum(r.error is not None for r in results),
        "requests_using_the_worker": sum(r.worker_used for r in results),
        "requests_losing_the_worker": sum(r.worker_lost for r in results),
        "schedules_with_several_workers": sum(make_schedule(seed, i).workers > 1
                                              for i in indices),
        "requests_moved_to_another_worker": sum(r.worker_moves for r in results),
        "connections": sum(r.connections for r in results),
        "virtual_s_max": max((r.virtual_s for r in results), default=0.0),
        "wall_s_max_schedule": max((r.wall_s for r in results), default=0.0),
        "wall_s": time.monotonic() - t0,
        "failed": [asdict(r) for r in bad],
    }


# ==== fuzzing ====================================================================================


def frame_of(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value: what a field may be swapped for."""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 3:
        return rng.choice([0, 1, -1, 2, 511, 512, 1 << 31, -(1 << 31), 1 << 40])
    if kind == 4:
        return rng.choice([0.0, -0.0, 1.5, -1.0, 1e308, float("nan"), float("inf"),
                           float("-inf"), 5e-324])
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if kind == 7:
        return msgpack.ExtType(rng.randrange(128), bytes(rng.randrange(4)))
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 10:
        return {random_value(rng, 3) if rng.random() < 0.5 else str(i): random_value(rng, depth + 1)
                for i in range(rng.randrange(4))}
    return [rng.randrange(512) for _ in range(rng.randrange(40))]  # a token-like list


def _wire(msg: Message) -> list[Any]:
    """A message as the array its frame carries (tag first)."""
    return msgpack.unpackb(encode_frame(msg)[4:], raw=False, strict_map_key=False)


MUTATORS = ("bitflip", "truncate", "extend", "swap_field", "arity", "length_lie",
            "random_msgpack", "random_bytes", "splice", "valid")  # "valid": an honest frame


def mutate(rng: random.Random, msg: Message, other: Message) -> tuple[str, bytes]:
    """One mutated frame made from ``msg`` (``other`` is a second message, for splices)."""
    kind = rng.choice(MUTATORS[:-1])
    frame = encode_frame(msg)
    if kind == "bitflip":
        data = bytearray(frame)
        for _ in range(rng.randint(1, 8)):
            low = 0 if rng.random() < 0.05 or len(data) <= 4 else 4  # the header, now and then
            data[rng.randrange(low, len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "truncate":
        cut = rng.randrange(1, len(frame))
        if rng.random() < 0.5:  # honest header over a short body: the next frame is misread
            return kind, frame[:cut]
        body = frame[4:][: max(cut - 4, 0)]
        return kind, struct.pack(">I", len(body)) + body
    if kind == "extend":
        extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        if rng.random() < 0.5:
            return kind, frame + extra
        body = frame[4:] + extra
        return kind, struct.pack(">I", len(body)) + body
    if kind == "swap_field":
        arr = _wire(msg)
        for _ in range(rng.randint(1, 2)):
            arr[rng.randrange(len(arr))] = random_value(rng)
        return kind, frame_of(arr)
    if kind == "arity":
        arr = _wire(msg)
        if rng.random() < 0.5 and len(arr) > 1:
            del arr[rng.randrange(1, len(arr)):]
        else:
            arr += [random_value(rng) for _ in range(rng.randint(1, 3))]
        return kind, frame_of(arr)
    if kind == "length_lie":
        length = rng.choice([0, 1, len(frame) - 5, len(frame) + 3, DEFAULT_MAX_FRAME,
                             DEFAULT_MAX_FRAME + 1, (1 << 32) - 1, rng.randrange(1 << 32)])
        return kind, struct.pack(">I", max(length, 0)) + frame[4:]
    if kind == "random_msgpack":
        return kind, frame_of(random_value(rng))
    if kind == "random_bytes":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    b = encode_frame(other)  # splice
    return kind, frame[: rng.randrange(1, len(frame))] + b[rng.randrange(len(b)):]


def _tokens(rng: random.Random, n: int, vocab: int = 512) -> tuple[int, ...]:
    return tuple(rng.randrange(vocab) for _ in range(n))


def controller_message(rng: random.Random, rid: int, position: int) -> Message:
    """A plausible controller-to-worker message (what the live worker is fuzzed with)."""
    kind = rng.randrange(6)
    if kind == 0:
        prompt = _tokens(rng, rng.randint(1, 24))
        return SessionStart(rid, prompt, rng.choice([0.0, 0.8]), rng.choice([0, 5]),
                            rng.choice([1.0, 0.9]), rng.randrange(100), rng.randint(1, 8),
                            rng.choice([0, len(prompt) + rng.randint(1, 40)]))
    if kind in (1, 2):
        return Commit(rid, rng.randrange(3), position, _tokens(rng, rng.randint(1, 4)))
    if kind == 3:
        return Cancel(rid, "done")
    if kind == 4:
        return Ping(rng.random() * 100, rng.randrange(1000))
    return Error("fuzz", rid=rng.choice([-1, rid]))


def _drafts(rng: random.Random, rid: int, position: int, vocab: int, epoch: int | None = None,
            **lane: int) -> Drafts:
    n = rng.randint(1, 4)
    base = position + rng.choice([0, 0, 0, 1, -1]) if not lane else position
    return Drafts(rid, rng.randrange(4) if epoch is None else epoch, max(base, 0),
                  _tokens(rng, n, vocab), tuple(rng.random() * 3 for _ in range(n)),
                  tuple(rng.random() for _ in range(n)), **lane)


def worker_message(rng: random.Random, rid: int, position: int, vocab: int = 512) -> Message:
    """A plausible worker-to-controller message (what the controller's side is fuzzed with)."""
    kind = rng.randrange(9)
    if kind <= 3:
        return _drafts(rng, rid, position, vocab)
    if kind == 7:  # a pass's lanes in one message: the main line and branches off it
        epoch = rng.randrange(4)
        items = [_drafts(rng, rid, position, vocab, epoch)]
        for lane in range(1, rng.randint(1, 4)):
            fork = position + rng.randrange(3)
            items.append(_drafts(rng, rid, fork, vocab, epoch, lane=lane, parent=0, fork=fork))
        return bundle_drafts(items)
    if kind == 4:
        return Pong(rng.random() * 10, rng.randrange(10), rng.random(), rng.random() * 3)
    if kind == 5:
        return SessionStats(rid, rng.randrange(50), rng.randrange(50), rng.randrange(5),
                            rng.randrange(5))
    if kind == 6:
        return Ping(rng.random(), rng.randrange(10))
    return Error("fuzz", rid=rng.choice([rid, rid + 1]))


# ---- the controller's side, sans-I/O ------------------------------------------------------------


VOCAB = 512


def synthetic_choice(position: int, previous: int) -> int:
    """The synthetic target's token at ``position`` after ``previous``: deterministic."""
    return (previous * 7 + position * 13 + 5) % VOCAB


def synthetic_reference(prompt: Sequence[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(synthetic_choice(len(seq), seq[-1]))
    return seq[len(prompt):]


class CoreHarness:
    """One request's ControllerCore behind a LinkCore, fed fuzzed frames through a FrameDecoder,
    with a synthetic target (and local draft) answering its passes at once."""

    def __init__(self, rng: random.Random, policy: str) -> None:
        self.rng = rng
        self.now = 0.0
        self.prompt = list(_tokens(rng, rng.randint(1, 12), VOCAB))
        self.max_tokens = rng.randint(4, 24)
        self.decoder = FrameDecoder()
        self.link = LinkCore(Hello(PROTOCOL_VERSION, "controller", tokenizer="t" * 16))
        self.link.connect(0.0)
        self.link.on_message(Hello(PROTOCOL_VERSION, "worker", tokenizer="t" * 16), 0.01)
        self.core = ControllerCore(1, self.prompt, StopCriteria(max_tokens=self.max_tokens),
                                   SamplingParams(),
                                   ControllerConfig(policy=PolicyConfig(PolicyName(policy))),
                                   has_local_draft=rng.random() < 0.5,
                                   estimates=Estimates.with_priors(), vocab_size=VOCAB)
        self.pending: list[RunTarget | RunDraft] = []
        self.max_chain = 0
        self.max_buffered = 0
        self._take(self.core.start(self.now))

    def _take(self, actions: Iterable[Any]) -> None:
        for a in actions:
            if isinstance(a, (RunTarget, RunDraft)):
                self.pending.append(a)

    def step(self) -> bool:
        """Complete one pass or fire the timer; False when there is nothing to do."""
        if self.pending:
            run = self.pending.pop(0)
            self.now += 0.003
            if isinstance(run, RunTarget):
                k = len(run.tokens)
                choices = tuple(synthetic_choice(run.start + i + 1, run.tokens[i])
                                for i in range(k - run.want, k))
                self._take(self.core.on_event(TargetDone(run.op, choices), self.now))
            else:  # a pass, or a round of them (RunDraft.count), as the runtime runs it
                def one_pass(_: int, feeds: list[RoundFeed]) -> list[DraftDone]:
                    guess = synthetic_choice(feeds[0].start + len(feeds[0].tokens),
                                             feeds[0].tokens[-1])
                    token = guess if self.rng.random() < 0.7 else self.rng.randrange(VOCAB)
                    return [DraftDone(run.op, token, 0.5, 0.5)]

                self.now += 0.003 * (run.count - 1)
                self._take(self.core.on_event(run_rounds([run], one_pass)[0], self.now))
            return True
        deadline = self.core.next_timer()
        if deadline is None:
            return False
        self.now = max(self.now, deadline)
        self._take(self.core.on_timer(self.now))
        return True

    def feed(self, data: bytes) -> bool:
        """Bytes from the 'worker', in random chunks; False once the stream is broken (as a
        transport closes the connection on a ProtocolError)."""
        at = 0
        while at < len(data):
            cut = at + self.rng.randint(1, max(len(data) - at, 1))
            try:
                for msg in self.decoder.feed(data[at:cut]):
                    self.on_message(msg)
            except ProtocolError:
                self._lost("protocol error")
                return False
            at = cut
            self.max_buffered = max(self.max_buffered, self.decoder.buffered)
        return True

    def on_message(self, msg: Message) -> None:
        self.now += 0.0005
        for a in self.link.on_message(msg, self.now):
            if isinstance(a, Route) and a.rid == self.core.rid:
                self._take(self.core.on_message(a.msg, self.now))
            elif not isinstance(a, (Route, Send)):
                self._lost("link lost")
        self.max_chain = max(self.max_chain, self.core.chain.held)

    def _lost(self, reason: str) -> None:
        from wanspec.core.actions import WorkerLost

        self._take(self.core.on_event(WorkerLost(reason), self.now))

    def finish(self, limit: int = 10_000) -> bool:
        for _ in range(limit):
            if self.core.finished:
                return True
            if not self.step():
                return self.core.finished
        return False

    @property
    def lossless(self) -> bool:
        return self.core.transcript.output == synthetic_reference(self.prompt, self.max_tokens)


def fuzz_controller(frames: int, seed: int) -> dict[str, Any]:
    """Mutated worker frames into the controller's decoder and cores (no I/O: fast)."""
    rng = random.Random(f"wanspec-soak-fuzz-controller:{seed}")
    stats: dict[str, Any] = {
        "frames": 0, "requests": 0, "crashes": 0, "hangs": 0, "divergences": 0, "max_chain": 0,
        "max_decoder_buffered": 0, "by_mutator": {m: 0 for m in MUTATORS}, "failed": []}
    while stats["frames"] < frames:
        h = CoreHarness(rng, rng.choice(POLICIES))
        stats["requests"] += 1

        def message() -> Message:
            return worker_message(rng, 1, len(h.core.transcript.tokens))

        try:
            for _ in range(rng.randint(1, 12)):  # bursts, with passes completing in between
                data, mutated, broken = stream(rng, message, rng.randint(1, 6),
                                               stats["by_mutator"])
                stats["frames"] += mutated
                if not h.feed(data) or broken:
                    break
                for _ in range(rng.randrange(3)):
                    h.step()
            if not h.finish():
                stats["hangs"] += 1
                stats["failed"].append({"request": stats["requests"], "why": "did not finish"})
            elif not h.lossless:
                stats["divergences"] += 1
                stats["failed"].append({"request": stats["requests"], "why": "output differs"})
        except Exception as exc:  # a core or the decoder raised: what the fuzzer looks for
            stats["crashes"] += 1
            stats["failed"].append({"request": stats["requests"], "why": repr(exc)})
        stats["max_chain"] = max(stats["max_chain"], h.max_chain)
        stats["max_decoder_buffered"] = max(stats["max_decoder_buffered"], h.max_buffered)
    stats["failed"] = stats["failed"][:20]
    return stats


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


def stream(rng: random.Random, message: Callable[[], Message], limit: int,
           counts: dict[str, int], valid_share: float = 0.3) -> tuple[bytes, int, str | None]:
    """Up to ``limit`` frames, mutated or (``valid_share`` of them) valid, ending with the
    first that breaks the stream for the receiver's decoder: one it refuses, or an incomplete
    one that would swallow what follows.  Returns the bytes, how many mutated frames the
    receiver reads, and how the stream broke: "refused" (the receiver closes at once),
    "incomplete" (it waits for the rest), or None (it did not; so every frame counted is read)."""
    probe = FrameDecoder()
    frames: list[bytes] = []
    mutated = 0
    for _ in range(limit):
        if rng.random() < valid_share:
            kind, data = "valid", encode_frame(message())
        else:
            kind, data = mutate(rng, message(), message())
            mutated += 1
        counts[kind] += 1
        frames.append(data)
        try:
            for _ in probe.feed(data):
                pass
        except ProtocolError:
            return b"".join(frames), mutated, "refused"
        if probe.buffered:
            return b"".join(frames), mutated, "incomplete"
    return b"".join(frames), mutated, None


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


# ==== command line ===============================================================================


MEMORY_LIMIT_MB = 256.0  # traced peak allowed in either fuzz run (the frame limit is 1 MiB)


def fuzz_verdict(report: dict[str, Any]) -> bool:
    w = report["worker"]
    return (report["crashes"] == 0 and report["hangs"] == 0 and report["divergences"] == 0
            and report["worker_serves_identically_afterwards"]
            and w["open_connections_after"] == 0 and w["sessions_after"] == 0
            and max(report["traced_peak_mb"].values()) < MEMORY_LIMIT_MB
            and report["controller"]["max_decoder_buffered"] <= DEFAULT_MAX_FRAME + 4)


def faults_verdict(report: dict[str, Any]) -> bool:
    return report["divergences"] == report["hangs"] == report["errors"] == 0


def _print_faults(r: dict[str, Any]) -> None:
    print(f"fault schedules: {r['schedules']} (seed {r['seed']}), requests {r['requests']}, "
          f"faults {r['faults']}")
    print(f"  divergences {r['divergences']}, hangs {r['hangs']}, errors {r['errors']}")
    print(f"  requests that used the worker {r['requests_using_the_worker']}, lost it "
          f"{r['requests_losing_the_worker']}; connections {r['connections']}")
    print(f"  schedules with several workers {r['schedules_with_several_workers']}, requests "
          f"moved to another worker {r['requests_moved_to_another_worker']}")
    print(f"  longest schedule: {r['virtual_s_max']:.2f} virtual s, "
          f"{r['wall_s_max_schedule']:.2f} wall s; total {r['wall_s']:.0f} wall s")


def _print_fuzz(r: dict[str, Any]) -> None:
    w, c = r["worker"], r["controller"]
    print(f"fuzz (seed {r['seed']}): worker {w['frames']} frames in {w['connections']} "
          f"connections ({w['wall_s']:.0f} s); controller side {c['frames']} frames in "
          f"{c['requests']} requests ({c['wall_s']:.0f} s)")
    print(f"  crashes {r['crashes']}, hangs {r['hangs']}, divergences {r['divergences']}")
    print(f"  worker afterwards: open connections {w['open_connections_after']}, sessions "
          f"{w['sessions_after']}; a real controller: {w['afterwards']}")
    print(f"  traced memory peak (MB): {r['traced_peak_mb']}; controller decoder buffered at "
          f"most {c['max_decoder_buffered']} B, chain at most {c['max_chain']} drafts")
    print(f"  worker mutators {w['by_mutator']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("faults", help="randomized fault schedules on the virtual clock")
    f.add_argument("--schedules", type=int, default=1000)
    f.add_argument("--only", type=int, default=None, help="run schedule N of the seed only")
    z = sub.add_parser("fuzz", help="mutated frames into a live worker and the controller")
    z.add_argument("--frames", type=int, default=100_000)
    z.add_argument("--controller-frames", type=int, default=None,
                   help="frames for the controller's side (default: as many as --frames)")
    for sp in (f, z):
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the faults are expected: keep the log quiet
    with one_thread():
        return _run(args)


def _commit() -> str:
    """The checkout's commit (with '+dirty' if it has changes): what a report measured."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _run(args: argparse.Namespace) -> int:
    pair = Pair()
    try:
        if args.command == "faults":
            report = soak_faults(pair, args.schedules, args.seed, args.only,
                                 progress=lambda s: print(s, file=sys.stderr, flush=True))
            _print_faults(report)
            ok = faults_verdict(report)
        else:
            report = soak_fuzz(pair, args.frames, args.seed, args.controller_frames)
            _print_fuzz(report)
            ok = fuzz_verdict(report)
    finally:
        pair.close()
    report["verdict"] = "pass" if ok else "FAIL"
    report["command"] = "python scripts/soak.py " + " ".join(sys.argv[1:])
    report["commit"] = _commit()
    print(f"verdict: {report['verdict']} (commit {report['commit']})")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
