"""``scripts/soak.py fuzz``, the controller's side: one request's sans-I/O cores fed fuzzed
frames, with a synthetic target answering its passes (no models, no sockets)."""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

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
from wanspec.protocol.codec import PROTOCOL_VERSION, FrameDecoder, ProtocolError
from wanspec.protocol.messages import Hello, Message
from wanspec.sampling import SamplingParams

from soak_common import POLICIES
from soak_frames import MUTATORS, random_tokens, stream, worker_message

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
        self.prompt = list(random_tokens(rng, rng.randint(1, 12), VOCAB))
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
