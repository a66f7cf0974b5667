"""``scripts/soak.py faults``: randomized fault schedules on the virtual clock (see that script's
docstring and docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.protocol.messages import Message
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.timing import clock
from wanspec.transport.base import Connection, ConnectionClosed
from wanspec.transport.inproc import InprocConnection, LinkParams, inproc_pair

from soak_common import POLICIES, PROMPTS, SAMPLINGS, TIMING, Pair


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
