"""The vocabulary between state machines and their drivers: actions out, events in.

Actions and events are values: treat them as immutable.  They are slotted, non-frozen dataclasses
because several are built per generated token (the simulator builds millions), and a frozen
dataclass costs ~4x as much to construct (every field is set through ``object.__setattr__``).
The hot ones spell out ``__init__`` (``init=False``): compiled with mypyc
(:mod:`wanspec.simulate.compiled`), a written ``__init__`` is native code, while the one the
dataclass decorator generates at import time stays interpreted (~7x slower to construct).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Site(str, Enum):
    """Where a draft forward pass runs; the split is the quantity wanspec exists to move."""

    CONTROLLER = "controller"  # the busy site that also runs the target
    WORKER = "worker"  # the remote, under-used site


# ---- actions (state machine -> driver) -------------------------------------------------------


@dataclass(slots=True, init=False)
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

    def __init__(self, op: int, start: int, tokens: tuple[int, ...], want: int) -> None:
        self.op = op
        self.start = start
        self.tokens = tokens
        self.want = want


@dataclass(slots=True, init=False)
class RunDraft:
    """One draft forward pass at ``site``: cut the draft cache to ``start``, feed ``tokens``,
    propose the token for absolute position ``start + len(tokens)``.

    Feeding several tokens in one pass is how a draft catches up on committed tokens cheaply.
    """

    op: int
    site: Site
    start: int
    tokens: tuple[int, ...]

    def __init__(self, op: int, site: Site, start: int, tokens: tuple[int, ...]) -> None:
        self.op = op
        self.site = site
        self.start = start
        self.tokens = tokens

    @property
    def position(self) -> int:
        return self.start + len(self.tokens)


@dataclass(slots=True, init=False)
class EmitTokens:
    """Tokens committed to the output, in order; they are final."""

    tokens: tuple[int, ...]

    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.tokens = tokens


@dataclass(slots=True)
class Finished:
    """The request is complete; ``reason`` is one of ``eos``, ``max_tokens``, ``stop_string``."""

    reason: str


Action = RunTarget | RunDraft | EmitTokens | Finished


# ---- events (driver -> state machine) --------------------------------------------------------


@dataclass(slots=True, init=False)
class TargetDone:
    op: int
    choices: tuple[int, ...]

    def __init__(self, op: int, choices: tuple[int, ...]) -> None:
        self.op = op
        self.choices = choices


@dataclass(slots=True, init=False)
class DraftDone:
    op: int
    token: int
    entropy: float
    top_prob: float

    def __init__(self, op: int, token: int, entropy: float, top_prob: float) -> None:
        self.op = op
        self.token = token
        self.entropy = entropy
        self.top_prob = top_prob


Event = TargetDone | DraftDone
