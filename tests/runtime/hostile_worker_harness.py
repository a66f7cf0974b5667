"""The harness of the hostile-worker tests: a fake worker on a real TCP socket on 127.0.0.1
that speaks the protocol by hand (the project's codec, or raw msgpack and raw bytes), driven by
a *behaviour*, and the runner of one case: a real :class:`RemoteEngine` with the shipped pair,
greedy (policy ``remote``, no local draft: the controller leans on the worker the most) and
seeded sampling (policy ``adaptive`` with a local draft, the default), whose output must equal
target-only decoding within a hard wall-clock deadline.

The handshake of the fake worker lives in one function, :func:`handshake`: when the protocol's
handshake changes, only it changes.  The cases: tests/runtime/test_hostile_worker.py (and the
bundle and dropped-session tests beside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import msgpack
import pytest

from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.models.fingerprint import tokenizer_fingerprint
from wanspec.protocol.codec import PROTOCOL_VERSION, FrameDecoder, ProtocolError, encode_frame
from wanspec.protocol.messages import Commit, Drafts, Hello, Message, SessionStart
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams
from wanspec.transport import factory

PROMPT = "To be, or not to be, that is"
MAX_TOKENS = 24
DEADLINE_S = 30.0  # hard bound on one request, handshake timeouts included (real seconds; a
# case takes under 5 s on a quiet machine, the margin is for a loaded CI host)
HELLO_TIMEOUT_S = 1.0  # the controller's patience with a worker that does not answer Hello
SAMPLINGS = {
    "greedy": (SamplingParams(), "remote", False),
    "sampled": (SamplingParams(temperature=0.8, top_p=0.95, seed=7), "adaptive", True),
}


# ---- the shipped pair and the references ------------------------------------------------------


@dataclass
class Pair:
    target: CausalLM
    draft: CausalLM
    prompt_ids: list[int]
    refs: dict[str, list[int]]  # target-only output, per sampling


@pytest.fixture(scope="module")
def pair():
    target = CausalLM(DEFAULT_TARGET, dtype="float32", device="cpu", name="target")
    draft = CausalLM(DEFAULT_DRAFT, dtype="float32", device="cpu", name="draft")
    engine = LocalEngine(target)
    refs = {name: engine.generate(PROMPT, mode="target", max_tokens=MAX_TOKENS, sampling=s,
                                  ignore_eos=True).token_ids
            for name, (s, _, _) in SAMPLINGS.items()}
    yield Pair(target, draft, target.encode(PROMPT), refs)
    target.close()
    draft.close()


# ---- the fake worker ----------------------------------------------------------------------------


def raw_frame(obj: Any) -> bytes:
    """Any msgpack object as a frame, whatever it means (or not) to the protocol."""
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def drafts_frame(rid: Any, epoch: Any, base: Any, tokens: Any, entropy: Any = (),
                 top_prob: Any = ()) -> bytes:
    """A Drafts frame with fields of any type (the codec's encoder would refuse nothing either,
    but this makes the wire content explicit)."""
    return raw_frame([3, rid, epoch, base, list(tokens), list(entropy), list(top_prob)])


@dataclass
class FakeWorker:
    """The worker end of one TCP connection, driven by a behaviour.

    A background task reads what the controller sends and keeps the session's state: the
    ``SessionStart`` and the committed sequence (prompt + commits), so behaviours can aim their
    lies at the right request and positions.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    hello: Hello  # what an honest worker would answer
    ref: list[int]  # the target's own sequence (prompt + output): an oracle drafter's source
    vocab: int
    rng: random.Random
    start: SessionStart | None = None
    committed: list[int] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    eof: bool = False  # the controller closed its end
    _inbox: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _started: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- wire ------------------------------------------------------------------------------------
    async def send(self, msg: Message) -> None:
        await self.send_raw(encode_frame(msg))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> Message | None:
        """The controller's next message before the session pump runs (None at end of stream)."""
        return await self._inbox.get()

    async def read_loop(self) -> None:
        """Decode what the controller sends; track its session once the handshake is done."""
        decoder = FrameDecoder()
        try:
            while data := await self.reader.read(1 << 16):
                for msg in decoder.feed(data):
                    self.received.append(msg)
                    self._inbox.put_nowait(msg)
                    if isinstance(msg, SessionStart) and self.start is None:
                        self.start, self.committed = msg, list(msg.prompt)
                        self._started.set()
                    elif isinstance(msg, Commit) and self.start and msg.rid == self.start.rid:
                        self.committed.extend(msg.tokens)
                    self._changed.set()
        except (ConnectionError, OSError, ProtocolError):
            pass
        finally:
            self.eof = True
            self._inbox.put_nowait(None)
            self._changed.set()

    # ---- session helpers ---------------------------------------------------------------------
    async def session(self) -> SessionStart:
        await self._started.wait()
        assert self.start is not None
        return self.start

    async def changed(self) -> None:
        """Wait until the controller sent something new (a commit, a cancel, or closed)."""
        await self._changed.wait()
        self._changed.clear()

    def oracle(self, position: int) -> int:
        return self.ref[position] if position < len(self.ref) else 0

    def wrong(self, position: int) -> int:
        return (self.oracle(position) + 1) % self.vocab

    async def chain(self, token_at: Callable[[int], int], *, shift: int = 0,
                    epoch_step: int = 1, first_epoch: int = 0,
                    epoch_after_rollback: Callable[[int], int] | None = None,
                    send_limit: int | None = None) -> None:
        """Draft like an honest worker (chain, lookahead, rollback with a new epoch) with the
        drafter ``token_at``; ``shift`` misplaces every Drafts' base, ``epoch_step`` 0 never
        renews the epoch, ``epoch_after_rollback`` picks the epochs of later chains."""
        start = await self.session()
        rid, end = start.rid, start.max_position or 1 << 30
        epoch, rollbacks, base = first_epoch, 0, len(start.prompt)
        chain: list[int] = []
        sent = 0
        while not self.eof and not self.writer.is_closing():
            n = len(self.committed)
            if n > base:
                k = n - base
                if chain[:k] == self.committed[base:n] and len(chain) >= k:
                    chain, base = chain[k:], n
                else:  # our chain diverged from the commits: roll back, new epoch
                    rollbacks += 1
                    epoch = (epoch_after_rollback(rollbacks) if epoch_after_rollback
                             else epoch + epoch_step)
                    chain, base = [], n
            at = base + len(chain)
            new = [token_at(p) for p in range(at, min(n + start.lookahead, end))]
            if new and (send_limit is None or sent < send_limit):
                await self.send(Drafts(rid, epoch, at + shift, tuple(new),
                                       (0.1,) * len(new), (0.9,) * len(new)))
                chain += new
                sent += 1
            await self.changed()
            if self.eof:
                return


async def handshake(w: FakeWorker) -> Hello | None:
    """The honest handshake: read the controller's Hello, answer with ours (None: it went away).

    The only place that knows the handshake; a behaviour that skips or breaks it does so itself.
    """
    msg = await w.recv()
    if not isinstance(msg, Hello):
        return None
    await w.send(w.hello)
    return msg


async def forever() -> None:
    await asyncio.sleep(3600)


Behaviour = Callable[[FakeWorker], Awaitable[None]]  # what a fake worker does once connected


# ---- draft trees: a worker that announces "branches" (the controller then asks for them) -------


def announce_branches(w: FakeWorker) -> None:
    w.hello = Hello(w.hello.version, w.hello.role, model=w.hello.model,
                    tokenizer=w.hello.tokenizer, vocab_size=w.hello.vocab_size,
                    capabilities=(*w.hello.capabilities, "branches"))


# ---- running a case ----------------------------------------------------------------------------


async def serve_fake(pair: Pair, behaviour: Behaviour, ref: list[int], seed: int
                     ) -> tuple[asyncio.Server, list[asyncio.Task[Any]]]:
    """A TCP server on 127.0.0.1 whose every connection is a fake worker running ``behaviour``."""
    hello = Hello(PROTOCOL_VERSION, "worker", model="hostile",
                  tokenizer=tokenizer_fingerprint(pair.draft.tokenizer),
                  vocab_size=pair.draft.vocab_size, capabilities=("drafts", "entropy"))
    tasks: list[asyncio.Task[Any]] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        w = FakeWorker(reader, writer, hello, pair.prompt_ids + ref, pair.target.vocab_size,
                       random.Random(seed))
        pump = asyncio.create_task(w.read_loop())
        tasks.append(pump)
        try:
            await behaviour(w)
            await forever()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # (the server's close cancels this task; asyncio then asks it for its result)
        finally:
            pump.cancel()
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    return server, tasks


async def run_case(pair: Pair, behaviour: Behaviour, sampling_name: str, seed: int = 0
                   ) -> tuple[Any, WorkerLink]:
    sampling, policy, local = SAMPLINGS[sampling_name]
    ref = pair.refs[sampling_name]
    server, tasks = await serve_fake(pair, behaviour, ref, seed)
    port = server.sockets[0].getsockname()[1]

    async def connector():
        return await factory.connect("tcp", f"127.0.0.1:{port}", timeout=2.0)

    link = WorkerLink(connector, RemoteEngine.hello_for(pair.target),
                      hello_timeout=HELLO_TIMEOUT_S)
    engine = RemoteEngine(pair.target, link, local_draft=pair.draft if local else None,
                          config=ControllerConfig(policy=PolicyConfig(PolicyName(policy))))
    try:
        result = await asyncio.wait_for(
            engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, sampling=sampling, ignore_eos=True),
            DEADLINE_S)
    finally:
        await link.close()
        server.close()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
    return result, link


def check_case(pair: Pair, behaviour: Behaviour, sampling_name: str, dropped_for: str | None,
               tree_followed: bool = False) -> tuple[Any, str]:
    """Run one case: the output is the target's, within the deadline; ``dropped_for``: a
    substring of why the worker was dropped (None: not checked); ``tree_followed``: a
    well-formed tree, followed and not refused.  Returns the result and the reasons."""
    t0 = time.monotonic()
    result, link = asyncio.run(run_case(pair, behaviour, sampling_name))
    wall = time.monotonic() - t0
    assert result.token_ids == pair.refs[sampling_name]
    assert wall < DEADLINE_S
    why = " / ".join(filter(None, [result.metrics["worker_lost"], link.last_error]))
    if dropped_for is not None:
        assert dropped_for in why, why
    if tree_followed:
        assert result.metrics["worker_used"] and not why
        assert sampling_name != "greedy" or result.metrics["branch_hits"] >= 1
    return result, why
