"""Continuous batching at one accelerator: which waiting passes run together, and when.

Every live request has at most one pass waiting at a time (its state machine asks for the next
only when the last is done).  Whenever the accelerator is free, :meth:`Batcher.next_pass` forms
the next forward pass: the kind (target or draft) of the pass that has waited longest, carrying
every waiting pass of that kind, oldest first, within the limits on sequences and fed tokens.
Requests join by submitting and leave by withdrawing; nothing waits for a batch to fill.

Oldest-first is what keeps it fair and starvation-free: a request's pass is in the next pass of
its kind, and the two kinds take turns by age.  A target pass is never held back for drafts or
the other way round, so each request sees what it would see alone plus the time of the passes it
shares.  The busy site runs the target's verifications and plain steps and the controller's local
drafts this way; the worker runs its drafting sessions the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class PassKind(str, Enum):
    TARGET = "target"
    DRAFT = "draft"


@dataclass(frozen=True)
class BatchLimits:
    """Most sequences and fed tokens one pass may carry (a pass always carries the oldest one)."""

    max_sequences: int = 64
    max_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.max_sequences < 1 or self.max_tokens < 1:
            raise ValueError("batch limits must be >= 1")


@dataclass(slots=True)
class Waiting:
    key: int  # the submitter's handle for this pass
    kind: PassKind
    tokens: int  # tokens the pass feeds
    since: float


@dataclass(frozen=True)
class Pass:
    kind: PassKind
    keys: tuple[int, ...]  # oldest first
    tokens: int
    submitted: tuple[float, ...]  # when each waited from: queueing delay = start - submitted


@dataclass
class Batcher:
    limits: BatchLimits = field(default_factory=BatchLimits)
    _waiting: dict[int, Waiting] = field(default_factory=dict)  # insertion order = age order

    def submit(self, key: int, kind: PassKind, tokens: int, now: float) -> None:
        if key in self._waiting:
            raise ValueError(f"pass {key} is already waiting")
        if tokens < 1:
            raise ValueError("a pass feeds at least one token")
        self._waiting[key] = Waiting(key, kind, tokens, now)

    def withdraw(self, key: int) -> None:
        """A request left (finished, cancelled, failed): its waiting pass, if any, is dropped."""
        self._waiting.pop(key, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def next_pass(self) -> Pass | None:
        """The pass to run now that the accelerator is free; ``None`` if nothing waits."""
        if not self._waiting:
            return None
        oldest = next(iter(self._waiting.values()))
        keys, since, tokens = [], [], 0
        for w in self._waiting.values():
            if w.kind is not oldest.kind:
                continue
            if keys and (len(keys) == self.limits.max_sequences
                         or tokens + w.tokens > self.limits.max_tokens):
                continue  # a smaller one behind may still fit
            keys.append(w.key)
            since.append(w.since)
            tokens += w.tokens
        for k in keys:
            del self._waiting[k]
        return Pass(oldest.kind, tuple(keys), tokens, tuple(since))
