"""Draft trees: the worker's main draft line plus branches from its runner-up tokens.

Why: after a rejection the target's own token at the mismatch is committed, and every draft the
worker made after the rejected one is void.  A single chain then costs a round trip (the worker
must hear of the commit and draft again) or a busy-site draft pass.  But the target's token is
often the draft's second or third choice there, and the worker's accelerator is under-used, so
the worker also drafts *branches*: continuations that start from those runner-ups.  When the
committed token starts a branch, that branch simply becomes the line the controller verifies
next -- no round trip, no local draft pass.

Shape.  A tree of one epoch is a set of *lanes*.  Lane 0 is the epoch's first chain, drafted
from the committed prefix.  Every other lane forks off a ``parent`` lane at position ``fork``:
its first token is one the parent did not choose at ``fork`` and its later tokens continue from
it (before ``fork`` its path is the parent's).  Lanes are linear, so each is one KV cache at the
worker and one contiguous stream of :class:`~wanspec.protocol.messages.Drafts` on the wire.

Following commits (:meth:`TreeShape.advance`) is the one rule both sites apply: start where the
last commit left the *cursor* (a lane and a position); for each newly committed token, if the
cursor's lane drafted it, move on; if the lane drafted another token there and has a branch at
that position starting with the committed token, move onto the branch; otherwise the commit has
*left the tree*.  Then every lane that disagrees with the committed prefix is pruned
(:meth:`TreeShape.prune`): what survives is the cursor's lane and the branches that fork from it,
or from each other, at positions not yet committed.  Lane ids only grow within an epoch, so a
message for a pruned lane is recognisably stale.

The worker holds its whole tree: leaving it means a new epoch (a fresh chain from the committed
prefix).  The controller holds what it has received (:class:`RemoteTree`): the worker may have
drafted a lane that is still on the wire, so leaving the tree there only means waiting for a
branch that starts with the committed token, and the committed prefix may run ahead of a lane
whose drafts are still coming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Sequence, TypeVar

from wanspec.core.chain import DraftToken


@dataclass(slots=True)
class Lane:
    """One linear part of the tree: drafts for positions ``start, start+1, ...``.

    ``fork`` is where the lane began (for a branch: the position of the token its parent did not
    choose); ``start`` moves forward as the committed prefix passes the lane (its committed
    drafts are dropped), so ``start >= fork``.
    """

    id: int
    parent: int  # the lane it forks off (lane 0: itself)
    fork: int
    start: int
    drafts: list[DraftToken] = field(default_factory=list)

    @property
    def end(self) -> int:
        """One past the last position the lane covers."""
        return self.start + len(self.drafts)

    def token_at(self, position: int) -> int:
        return self.drafts[position - self.start].token


L = TypeVar("L", bound=Lane)


class TreeShape(Generic[L]):
    """The lanes of one epoch and the cursor that follows the committed prefix through them."""

    def __init__(self, root: L) -> None:
        self.lanes: dict[int, L] = {root.id: root}
        # (parent, fork, first token) -> lane: where a commit can move onto a branch
        self.branches: dict[tuple[int, int, int], int] = {}
        self.lane = root.id  # the cursor: the lane the committed prefix runs along,
        self.pos = root.start  # and the first committed position not yet followed
        self.off: tuple[int, int] | None = None  # (position, token) where a commit left the tree
        self.last_id = root.id  # the highest lane id of the epoch so far
        self.moves = 0  # times a commit moved the cursor onto a branch
        self._pruned: tuple[int, int, tuple[int, int] | None] | None = None  # (pos, lane, off)

    @property
    def current(self) -> L:
        return self.lanes[self.lane]

    def add_branch(self, lane: L) -> None:
        """Add a branch (its first draft is the token it starts with)."""
        self.lanes[lane.id] = lane
        self.branches[(lane.parent, lane.fork, lane.drafts[0].token)] = lane.id
        self.last_id = max(self.last_id, lane.id)

    def advance(self, committed: Sequence[int]) -> list[tuple[int, DraftToken, L]]:
        """Follow the newly committed tokens from the cursor (see the module docstring).

        Stops early where the cursor's lane has no draft yet (the caller decides what that
        means) or where the commit leaves the tree (``off`` is set).  Returns the drafts it
        compared with a committed token, as ``(position, draft, lane)``, in order: the judged
        drafts.  A branch's first token is not among them (it is the target's token by
        construction).
        """
        judged: list[tuple[int, DraftToken, L]] = []
        lane = self.lanes[self.lane]
        while self.off is None and self.pos < len(committed) and self.pos < lane.end:
            pos = self.pos
            token = committed[pos]
            draft = lane.drafts[pos - lane.start]
            judged.append((pos, draft, lane))
            if draft.token != token:
                branch = self.branches.get((lane.id, pos, token))
                if branch is None:
                    self.off = (pos, token)
                    break
                lane = self.lanes[branch]
                self.lane = branch
                self.moves += 1
            self.pos = pos + 1
        return judged

    def prune(self) -> list[L]:
        """Drop the lanes that disagree with the committed prefix; returns them.

        Kept: the cursor's lane (its committed drafts dropped) and every lane forking off a kept
        lane at a position not yet committed.  After the commit left the tree nothing else is
        consistent.  Lane ids grow from parent to child, so one pass in id order suffices.
        """
        current = self.lanes[self.lane]
        cut = min(self.pos, current.end) - current.start
        if cut <= 0 and (self.pos, self.lane, self.off) == self._pruned:
            # nothing moved since the last prune (it runs after every message): every lane kept
            # then still forks at an uncommitted position, and a branch is accepted only there
            return []
        self._pruned = (self.pos, self.lane, self.off)
        keep = {current.id}
        if self.off is None:
            for lane in sorted(self.lanes.values(), key=lambda x: x.id):
                if lane.id not in keep and lane.parent in keep and lane.fork >= self.pos:
                    keep.add(lane.id)
        dropped = [lane for lane in self.lanes.values() if lane.id not in keep]
        for lane in dropped:
            del self.lanes[lane.id]
        if dropped:
            self.branches = {k: v for k, v in self.branches.items() if v in keep}
        # the committed head of the cursor's lane is not needed any more
        if cut > 0:
            del current.drafts[:cut]
            current.start += cut
        return dropped

    def path_token(self, lane: L, position: int) -> int:
        """The token at ``position`` on ``lane``'s path (a lane or one of its kept ancestors);
        ``position`` must be at or after the cursor and before the lane's end."""
        while position < lane.start:
            lane = self.lanes[lane.parent]
        return lane.token_at(position)


class TreeError(ValueError):
    """Drafts that no honest worker sends (the request drops the worker)."""


@dataclass(slots=True)
class RemoteLane(Lane):
    last_arrival: float | None = None  # when this lane's latest drafts came


class RemoteTree:
    """The controller's view of the worker's draft tree for one request, as received.

    Usable drafts are those of the cursor's lane from the committed end on (:meth:`window`).
    The tree is *dead* before anything arrives, after the committed prefix left it (until a
    branch starting with the committed token arrives, or a new epoch), or when its first lane
    starts beyond the committed prefix (the worker drafted from something we never committed).
    ``max_lanes`` bounds the lanes kept at once (1: a plain chain): a worker exceeding it, or
    sending a malformed branch, raises :class:`TreeError`.
    """

    def __init__(self, max_lanes: int = 1) -> None:
        self.max_lanes = max_lanes
        self.epoch = -1
        self.tree: TreeShape[RemoteLane] | None = None
        self.received = 0  # drafts received, stale ones included
        self.stale_dropped = 0  # received drafts of pruned lanes or older epochs
        self.branch_hits = 0  # commits that moved onto a branch
        self.pace: float | None = None  # the latest interval between one lane's drafts
        self._beyond = False
        self._killed = False

    # ---- the chain-like view the controller's policy reads -------------------------------------
    @property
    def dead(self) -> bool:
        t = self.tree
        return self._killed or t is None or t.off is not None or self._beyond

    @property
    def end(self) -> int:
        """One past the last position the cursor's lane covers."""
        return self.tree.current.end if self.tree is not None else 0

    @property
    def last_arrival(self) -> float | None:
        """When drafts of the cursor's lane last arrived (None before any arrived)."""
        return self.tree.current.last_arrival if self.tree is not None else None

    def kill(self) -> None:
        """The worker is gone: nothing it sent is used any more."""
        self._killed = True

    def window(self, n: int, k: int) -> list[DraftToken]:
        """Up to ``k`` usable drafts for positions ``n, n+1, ...`` (requires :meth:`sync` first)."""
        t = self.tree
        if self.dead or t is None or t.pos != n:
            return []
        lane = t.current
        return lane.drafts[n - lane.start : n - lane.start + k]

    def pending_catch_up(self, n: int) -> int:
        """How many committed positions the cursor's lane still has to cover before reaching
        ``n`` (the worker is still drafting positions we already committed)."""
        if self.dead or self.tree is None:
            return 0
        return max(0, n - self.tree.current.end)

    def lanes(self) -> int:
        return len(self.tree.lanes) if self.tree is not None else 0

    @property
    def held(self) -> int:
        """Drafts held, all lanes together (what a worker can make us store)."""
        return sum(len(x.drafts) for x in self.tree.lanes.values()) if self.tree is not None else 0

    # ---- events ---------------------------------------------------------------------------------
    def on_drafts(self, epoch: int, base: int, drafts: Sequence[DraftToken], now: float,
                  lane: int = 0, parent: int = 0, fork: int = 0) -> bool:
        """Add received drafts; False if they were stale (dropped).  Raises :class:`TreeError`
        for drafts no honest worker sends."""
        self.received += len(drafts)
        self.pace = None
        if self._killed or epoch < self.epoch:
            return self._stale(drafts)
        if epoch > self.epoch:
            if lane != 0:
                raise TreeError(f"epoch {epoch} starts with lane {lane}, not its main line")
            self.epoch = epoch
            self.tree = TreeShape(RemoteLane(0, 0, base, base))
            self._beyond = False
        t = self.tree
        assert t is not None
        known = t.lanes.get(lane)
        if known is not None:
            if base != known.end or (t.off is not None and known is t.current):
                return self._stale(drafts)  # out of order, or drafted after a rejected token
            if known.last_arrival is not None and known.drafts:
                self.pace = (now - known.last_arrival) / len(drafts)
            known.drafts.extend(drafts)
            known.last_arrival = now
            return True
        if lane <= t.last_id:
            return self._stale(drafts)  # a pruned lane
        return self._new_branch(t, lane, parent, fork, base, drafts, now)

    def _new_branch(self, t: TreeShape[RemoteLane], lane: int, parent: int, fork: int,
                    base: int, drafts: Sequence[DraftToken], now: float) -> bool:
        if self.max_lanes <= 1:
            raise TreeError(f"branch lane {lane} in a session without branches")
        if base != fork:
            raise TreeError(f"branch lane {lane} starts at {base}, not at its fork {fork}")
        t.last_id = lane  # (from now on its messages are known, or known stale)
        up = t.lanes.get(parent)
        if up is None:
            if parent < lane:
                return self._stale(drafts)  # its parent was pruned
            raise TreeError(f"branch lane {lane} forks off unknown lane {parent}")
        first = drafts[0].token
        if fork < up.start:
            return self._stale(drafts)  # it forks at a position committed since
        if t.off is not None and not (t.off == (fork, first) and up is t.current):
            return self._stale(drafts)  # the commit left the tree elsewhere
        if not up.fork + (parent != 0) <= fork < up.end:
            raise TreeError(f"branch lane {lane} forks off lane {parent} at {fork}, "
                            f"outside what that lane drafted")
        if first == up.token_at(fork):
            raise TreeError(f"branch lane {lane} starts with its parent's own token")
        if (parent, fork, first) in t.branches:
            raise TreeError(f"branch lane {lane} repeats a branch")
        if len(t.lanes) >= self.max_lanes:
            raise TreeError(f"more than {self.max_lanes} lanes at once")
        t.add_branch(RemoteLane(lane, parent, fork, fork, list(drafts), last_arrival=now))
        if t.off == (fork, first) and up is t.current:
            t.off = None  # the branch the commit took has arrived: follow it (sync)
        return True

    def _stale(self, drafts: Sequence[DraftToken]) -> bool:
        self.stale_dropped += len(drafts)
        return False

    def sync(self, committed: Sequence[int]) -> list[tuple[int, DraftToken]]:
        """Follow the committed tokens through the tree and prune what disagrees with them.

        Returns the judged drafts (see :meth:`TreeShape.advance`)."""
        t = self.tree
        if t is None or self._killed:
            return []
        if t.pos > len(committed):  # (an honest worker only knows our commits)
            self._beyond = True
            return []
        moves = t.moves
        judged = t.advance(committed)
        self.branch_hits += t.moves - moves
        t.prune()
        return [(position, draft) for position, draft, _ in judged]
