"""Continuous batching at one accelerator: which waiting passes run together, and when.

Every live request has at most one pass waiting at a time (its state machine asks for the next
only when the last is done).  Whenever the accelerator is free, :meth:`Batcher.next_pass` forms
the next forward pass, carrying every waiting pass of one kind, oldest first, within the limits
on sequences and fed tokens.  Requests join by submitting and leave by withdrawing; nothing waits
for a batch to fill.

**Drafts first.**  If any draft pass waits, the next pass is a draft pass; a target pass runs when
no draft waits.  Draft passes are short, and a request drafts only until its window is full, then
asks for verification: so running drafts first lets every drafting request finish its window and
join the *next* target pass, instead of target passes going out half full while others draft.
This is the lockstep of batched speculative decoding in vLLM or SGLang (everyone drafts, then one
verification carries everyone), reached without a global round: requests joining or leaving at
any pass fall into step.  It never starves a target pass, because a request's drafts end with its
window; as a guard against any decoder that drafts without end, a target pass that has waited
through ``max_draft_streak`` draft passes runs next (a pass formed here: a local draft round,
``RunDraft.count``, runs its passes in one call to the device and counts as one).  Within a kind, the oldest passes go first,
so the limits never starve anyone either.

The busy site runs the target's verifications and plain steps and the controller's local drafts
this way; the worker runs its drafting sessions the same way (drafts only).
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
    max_draft_streak: int = 64  # draft passes (rounds) a waiting target pass lets go first, at most

    def __post_init__(self) -> None:
        if min(self.max_sequences, self.max_tokens, self.max_draft_streak) < 1:
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
    _draft_streak: int = 0  # draft passes run while a target pass waited

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
        kind = self.next_kind()
        if kind is None:
            return None
        if kind is PassKind.DRAFT and any(w.kind is PassKind.TARGET for w in self._waiting.values()):
            self._draft_streak += 1
        elif kind is PassKind.TARGET:
            self._draft_streak = 0
        keys, since, tokens = [], [], 0
        for w in self._waiting.values():
            if w.kind is not kind:
                continue
            if keys and (len(keys) == self.limits.max_sequences
                         or tokens + w.tokens > self.limits.max_tokens):
                continue  # a smaller one behind may still fit
            keys.append(w.key)
            since.append(w.since)
            tokens += w.tokens
        for k in keys:
            del self._waiting[k]
        return Pass(kind, tuple(keys), tokens, tuple(since))

    def verify_at_once(self, carried: int, promised: int, live: int, tokens: int) -> bool:
        """A draft pass carrying ``carried`` requests just ended, ``promised`` of them having
        said which verification follows their round (``RunDraft.then_verify``, feeding
        ``tokens`` in all): run those verifications as the next pass now, before their requests
        have seen their drafts?  (If so, that is the target pass formed now.)

        Yes when that pass carried every live request (``live``), each promised, nothing else
        waits, and the verifications fit in one pass (the limits of :meth:`next_pass`): the next
        pass would carry exactly them, and starting it at once saves the host turnaround
        between the two passes (docs/results.md §10).  Otherwise the requests queue their
        verifications as usual, so that a pass still carries everyone who is ready (under load
        that batching is worth more than one request's turnaround) and no more than it may."""
        fits = promised == 1 or (promised <= self.limits.max_sequences
                                 and tokens <= self.limits.max_tokens)
        if carried == promised == live and fits and not self._waiting:
            self._draft_streak = 0
            return True
        return False

    def seats_left(self, kind: PassKind) -> int:
        """How many more passes of ``kind`` the next pass of that kind could carry (by the
        sequence limit): a rider is offered a seat only while one is left."""
        waiting = sum(1 for w in self._waiting.values() if w.kind is kind)
        return max(self.limits.max_sequences - waiting, 0)

    def next_kind(self) -> PassKind | None:
        """The kind of the next pass (``None``: nothing waits): drafts first, unless a target
        pass has already let ``max_draft_streak`` draft passes go first."""
        kinds = {w.kind for w in self._waiting.values()}
        if not kinds:
            return None
        if PassKind.TARGET not in kinds:
            return PassKind.DRAFT
        if PassKind.DRAFT in kinds and self._draft_streak < self.limits.max_draft_streak:
            return PassKind.DRAFT
        return PassKind.TARGET
