"""The vocabulary between state machines and their drivers: actions out, events in.

A state machine never performs I/O.  It returns *actions* (run this forward pass, send this
message, emit these tokens) and is told what happened through *events* (a pass finished, the
worker was lost) and protocol messages.  All are values: treat them as immutable.  They are
slotted dataclasses but not frozen because several are built per draft pass (the simulator builds
millions) and a frozen one costs three times as much to construct.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wanspec.protocol.messages import Message


class Site(str, Enum):
    """Where a draft forward pass runs; the split is the quantity wanspec exists to move."""

    CONTROLLER = "controller"  # the busy site that also runs the target
    WORKER = "worker"  # the remote, under-used site


# ---- actions (state machine -> driver) -------------------------------------------------------


@dataclass(slots=True)
class RunTarget:
    """One target forward pass.

    The target's KV cache is first cut back to ``start`` tokens (rollback is implicit), then
    ``tokens`` are fed at absolute positions ``start .. start+len-1``.  The driver answers with
    :class:`TargetDone` holding the target's chosen token for the last ``want`` positions predicted,
    i.e. for absolute positions ``start+len-want+1 .. start+len``.
    """

    op: int
    start: int
    tokens: tuple[int, ...]
    want: int


@dataclass(slots=True)
class RunDraft:
    """One draft forward pass at ``site``: cut the draft cache to ``start``, feed ``tokens``,
    propose the token for absolute position ``start + len(tokens)``.

    Feeding several tokens in one pass is how a draft catches up on committed tokens cheaply.

    ``count`` > 1: a *round* of that many passes in one call to the device, each after the first
    feeding the token the one before proposed (:func:`wanspec.core.rounds.run_rounds`).  Why: a
    local round whose length is decided when it starts (standard SD, the fixed policies) gains
    nothing from a return to the event loop between its passes, and each return costs the busy
    accelerator a host turnaround (docs/results.md §10).  The result is one
    :class:`DraftDone` whose ``rest`` holds the later passes' proposals.
    """

    op: int
    site: Site
    start: int
    tokens: tuple[int, ...]
    count: int = 1
    then_verify: ThenVerify | None = None  # the verification that follows the round, if
    # already decided when it starts

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a draft round has at least one pass, got count={self.count}")

    @property
    def position(self) -> int:
        return self.start + len(self.tokens)


@dataclass(slots=True)
class ThenVerify:
    """The verification a state machine will queue the moment a draft round ends, decided when
    the round started: a round that fills its window (standard SD, the fixed policies) is always
    verified next, whatever its time brings.

    Why say so in advance: the busy site may then start that verification as the round leaves
    the device, before the state machine has even seen the drafts (vLLM's async scheduling: the
    next step is prepared while the last one's output is processed), saving the host turnaround
    between the two passes.  The state machine still queues the verification itself, built the
    same way; a driver that started it early hands over that pass's result only if the two are
    equal (:mod:`wanspec.runtime.busy`), so a broken promise costs time, never a token.
    """

    start: int  # the verification's start (its first fed token is the last committed one)
    prefix: tuple[int, ...]  # what it feeds before the round's proposals

    def action(self, op: int, done: DraftDone) -> RunTarget:
        """The verification of the round that ended with ``done``: the prefix, then every
        proposal of the round, each position's choice wanted."""
        feed = (*self.prefix, *(p.token for p in done.proposals))
        return RunTarget(op, self.start, feed, len(feed))


@dataclass(slots=True)
class EmitTokens:
    """Tokens committed to the output, in order; they are final."""

    tokens: tuple[int, ...]


@dataclass(slots=True)
class Finished:
    """The request is complete; ``reason`` is one of ``eos``, ``max_tokens``, ``stop_string``."""

    reason: str


@dataclass(slots=True)
class Send:
    """Send ``msg`` to the peer site."""

    msg: Message


@dataclass(slots=True)
class Log:
    """Something an operator should see once (why a peer was refused or dropped)."""

    message: str


Action = RunTarget | RunDraft | EmitTokens | Finished


# ---- events (driver -> state machine) --------------------------------------------------------


@dataclass(slots=True)
class TargetDone:
    op: int
    choices: tuple[int, ...]
    head_start: float = 0.0  # seconds the pass had run when the request asked for it (a
    # verification started as its round ended, RunDraft.then_verify): the pass took that much
    # longer than the request saw


@dataclass(slots=True)
class DraftDone:
    """A draft pass's proposal: ``token``, its distribution's entropy (nats) and top probability.

    ``alternatives``: the draft's next choices after ``token``, best first (ranked by the same
    score that chose ``token``: logits when greedy, noised log-probabilities when sampling), and
    ``alt_probs`` their probabilities under the draft's processed distribution.  A worker growing
    a draft tree (:mod:`wanspec.core.tree`) starts branches from them; other users ignore them.
    """

    op: int
    token: int
    entropy: float
    top_prob: float
    alternatives: tuple[int, ...] = ()
    alt_probs: tuple[float, ...] = ()
    rest: tuple["DraftDone", ...] = ()  # a round's later proposals (``RunDraft.count``), in order

    @property
    def proposals(self) -> tuple["DraftDone", ...]:
        """Every proposal of the pass or round, in order (this one first)."""
        return (self, *self.rest)


@dataclass(slots=True)
class WorkerLost:
    """The worker connection is gone (or refused this request); ``reason`` is for the log."""

    reason: str


Event = TargetDone | DraftDone
