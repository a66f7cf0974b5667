"""What one worker takes on: its limits, which connections it admits, and how loaded its draft
device is (the sessions' share of a pass, and the lookahead that share allows).

Pure rules over plain numbers, read by every connection's :class:`~wanspec.core.worker.WorkerCore`
and kept current by the adapter (:class:`WorkerLoad` is one object shared by all cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from wanspec.core.passtimes import PassTimes

# a peer that has not introduced itself (and, with a key, proved it) by then is dropped
HELLO_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What one worker serves at most, so that no controller (or anyone who can reach the port)
    can make it hold unbounded state.  Each is a flag of ``wanspec worker``."""

    max_connections: int = 64  # open connections, handshakes included
    max_sessions: int = 256  # live sessions, all connections together
    max_connection_sessions: int = 64  # live sessions of one connection
    max_prompt: int = 32768  # tokens of a SessionStart's prompt
    max_lookahead: int = 64  # a session drafts at most this far past its committed prefix
    max_branches: int = 32  # branch lanes of one session's draft tree (each holds a KV cache)
    hello_timeout_s: float = HELLO_TIMEOUT_S  # a connection must send Hello within this
    idle_timeout_s: float = 60.0  # after Hello, a connection silent this long is closed (0: never)


class Admit(str, Enum):
    """What to do with a new connection (:func:`admit_connection`)."""

    SERVE = "serve"
    REFUSE = "refuse"  # answer its first message with Error(code="overloaded"), then close
    DROP = "drop"  # close it without a word: even the refusals are at their limit


def admit_connection(serving: int, refusing: int, limits: WorkerLimits) -> Admit:
    """A connection arrives while ``serving`` connections are served and ``refusing`` are being
    refused.  Beyond ``max_connections`` it is refused with a reason the controller understands;
    refusals are connections too, so beyond as many again it is closed at once."""
    if serving < limits.max_connections:
        return Admit.SERVE
    if refusing < limits.max_connections:
        return Admit.REFUSE
    return Admit.DROP


# Sequences one worker draft pass carries by default (sessions' main lines and their trees'
# branch lanes).  Not the busy site's limit: the worker's device serves only drafts, and a 1B-class
# draft's pass stays memory-bound (costs about the same) up to ~250 tokens on the documented A100
# (DEFAULT_DRAFT_COST: 4 ms of weights against 0.016 ms of compute per token); it is also the
# sequence limit serving engines default to (vLLM's max_num_seqs).  Beyond it, branches pause
# first (WorkerLoad.over_capacity), then sessions share passes (lookahead_cap).
DEFAULT_WORKER_MAX_BATCH = 256

# The same knee, measured.  A branch lane rides in a draft pass for free while the pass is
# memory-bound; past the knee each lane adds its own compute and slows every session's main line.
# At the knee the per-sequence part of a pass equals its fixed part: a pass costs twice what it
# costs its main lines alone.  So branch lanes stop where a pass would cost CHEAP_PASS_FACTOR
# times a pass of the main lines, by a fit of the device's own decoding passes against the
# sequences they carry (WorkerLoad.on_pass): ~300 sequences on the A100 of DEFAULT_DRAFT_COST
# (the limit above decides there), a few on a CPU, where each sequence adds a quarter of a
# millisecond to a one-millisecond pass.
CHEAP_PASS_FACTOR = 2.0
MIN_PASSES_FITTED = 16  # passes seen before the fit is trusted (until then: max_batch alone)
# passes the fit covers: about the last 2 s of a busy worker at the default cost (a shorter one
# lets a few passes of similar size swing the slope, and the limit with it)
WORKER_PASS_WINDOW = 256
# a pass slower than the fit's expectation by more than this many times the recent spread of
# passes around it (mean absolute deviation, followed with weight SPREAD_WEIGHT) counts as that
OUTLIER_SPREADS = 3.0
SPREAD_WEIGHT = 0.05


def worker_pass_times() -> PassTimes:
    """The draft device's pass times as :attr:`WorkerLoad.passes` fits them: seconds against
    sequences carried."""
    return PassTimes(window=WORKER_PASS_WINDOW)


def cheap_sequences(passes: PassTimes | None, sessions: int, floor_s: float = 0.0
                    ) -> int | None:
    """Sequences a draft pass may carry (main lines and branch lanes) before it costs
    :data:`CHEAP_PASS_FACTOR` times a pass of the ``sessions`` main lines alone; never fewer than
    the main lines.  None: no limit known (not measured, too few passes, or passes that do not
    get slower with more tokens: memory-bound, or an emulated flat cost).

    ``floor_s`` > 0: the worker emulates a device whose one-sequence decoding pass costs that
    (``wanspec worker --draft-ms``: a flat cost), and ``passes`` are its real compute under the
    floor.  Lanes go on while the compute still fits within that floor and stop where a pass
    would outlast it: past that the site runs slower than the device it emulates, which no
    emulated run would show.  (For an emulated cost that grows with sequences the one-sequence
    floor is the conservative budget.)"""
    if passes is None or len(passes.samples) < MIN_PASSES_FITTED:
        return None
    fitted = passes.fit()
    assert fitted is not None
    a, b = fitted
    if not b > 0.0:
        return None
    main = max(sessions, 1)
    budget = floor_s if floor_s > 0.0 else CHEAP_PASS_FACTOR * max(a + b * main, 0.0)
    cheap = (budget - a) / b
    if cheap >= 2**31:  # (a slope of rounding noise: flat)
        return None
    return max(main, int(cheap))


@dataclass(slots=True)
class WorkerLoad:
    """How loaded the worker's draft device is: one object shared by the cores of all connections.

    The adapter keeps it current (the live sessions of every connection, the device's recent busy
    fraction) and calls :meth:`WorkerCore.on_load_changed` when the number of sessions changes; a
    core reads it when it caps a session's lookahead and when it answers a Ping.
    """

    max_batch: int = 0  # sequences one draft pass carries; 0: no limit (never over capacity)
    sessions: int = 0  # live sessions, all connections together
    branches: int = 0  # branch lanes of their draft trees (each a sequence of a pass); the cores
    # keep this count themselves
    busy: float = 0.0  # fraction of recent time the draft device was running passes, in [0, 1]
    # the draft device's decoding passes, seconds against sequences (None: trees are not fitted)
    passes: PassTimes | None = None
    spread: float = 0.0  # recent mean absolute deviation of those passes from the fit (seconds)
    # > 0: the device emulates a cost, a floor on real time, of this many seconds for a
    # one-sequence decoding pass, and ``passes`` are its real compute (cheap_sequences keeps it
    # within the floor)
    floor_s: float = 0.0

    def on_pass(self, sequences: int, longest: int, seconds: float) -> None:
        """A draft pass ran (``longest``: the most tokens one sequence fed).  Only decoding
        passes (a token or two per sequence) teach what a lane adds: a prompt's prefill or a
        fork's catch-up feeds many tokens for one sequence, which a CPU runs far faster per token
        than it runs sequences.  A pass slower than twice what the fit expects counts as twice:
        one pause (a garbage collection, a preemption) should not shrink every session's tree for
        the next :data:`WORKER_PASS_WINDOW` passes.  So a pass slower than the fit expects by
        more than :data:`OUTLIER_SPREADS` times the recent spread counts as that much slower; a
        lasting change widens the spread within a few tens of passes and moves the fit."""
        if self.passes is None or sequences <= 0 or longest > 2:
            return
        if len(self.passes.samples) >= MIN_PASSES_FITTED:
            expected = self.passes.predict(sequences)
            assert expected is not None
            allowed = expected + OUTLIER_SPREADS * self.spread
            self.spread += SPREAD_WEIGHT * (abs(seconds - expected) - self.spread)
            seconds = min(seconds, allowed)
        self.passes.add(sequences, seconds)

    @property
    def demand(self) -> float:
        """Live sessions per sequence a pass carries: above 1 the worker is over capacity."""
        return self.sessions / self.max_batch if self.max_batch > 0 else 0.0

    @property
    def seats(self) -> int:
        """Sequences a pass carries with branch lanes: ``max_batch`` (0: no limit), and no more
        than keep it cheap on the measured device (:func:`cheap_sequences`)."""
        cheap = cheap_sequences(self.passes, self.sessions, self.floor_s)
        if cheap is None:
            return self.max_batch
        return cheap if self.max_batch <= 0 else min(self.max_batch, cheap)

    @property
    def over_capacity(self) -> bool:
        """More sequences want a pass than it carries: branch lanes then stop drafting (they
        would take turns from sessions' main lines, or slow them) until the load falls or
        commits prune them."""
        seats = self.seats
        return seats > 0 and self.sessions + self.branches > seats

    @property
    def spare_seats(self) -> bool:
        """Whether a pass has room for another branch lane beyond every session's main line:
        branches use the device's spare capacity only, never a session's turn."""
        seats = self.seats
        return seats <= 0 or self.sessions + self.branches < seats


def lookahead_cap(lookahead: int, load: WorkerLoad) -> int:
    """How far past the committed prefix a session may draft, given the worker's load.

    Within capacity (every live session fits in one pass) a session drafts up to its own
    ``lookahead``: sharing a pass costs it nothing.  Over capacity, ``sessions`` sessions share
    passes of ``max_batch`` sequences: the batcher serves them oldest first, so each is carried in
    about ``max_batch / sessions`` of the passes and its chain grows that much slower.  Its cap
    shrinks by the same factor::

        cap = max(1, lookahead * max_batch // sessions)

    Why: a draft at depth ``k`` of a chain is used only if the ``k - 1`` before it are accepted,
    while a session whose chain was just consumed or rolled back has a controller waiting for its
    next token; a pass slot spent deep in one chain is a slot that session waits for.  Scaled by
    the share, refilling a chain takes as many passes as on an idle worker (the chain stays the
    same time ahead of its controller), the caps of all sessions add up to at most
    ``lookahead * max_batch`` (what ``lookahead`` full passes draft), and the effort goes to the
    near heads of the chains.  Never below one: the next token is the draft a controller uses
    first.
    """
    if load.max_batch <= 0 or load.sessions <= load.max_batch:
        return lookahead
    return max(1, lookahead * load.max_batch // load.sessions)
