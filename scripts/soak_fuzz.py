"""``scripts/soak.py fuzz``: mutated frames into a live worker and the controller's sans-I/O side
(see that script's docstring and docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import struct
import time
import tracemalloc
from dataclasses import asdict
from typing import Any, Callable, Iterable, Sequence

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
from wanspec.runtime.worker import WorkerService
from wanspec.sampling import SamplingParams
from wanspec.transport import factory
from wanspec.transport.base import Connection

from soak_common import POLICIES, PROMPTS, REFERENCE_TOKENS, SAMPLINGS, Pair


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
