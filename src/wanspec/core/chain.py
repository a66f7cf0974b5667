"""The controller's view of the worker's draft chain, checked against the committed prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


def feed_from(committed: Sequence[int], proposal: Sequence[int], start: int) -> tuple[int, ...]:
    """``tuple((committed + proposal)[start:])`` without building the whole sequence.

    What a draft pass feeds when its KV cache holds the first ``start`` tokens; drafting runs
    once per draft token, and the committed prefix (the prompt and all output) only grows.
    """
    n = len(committed)
    if start >= n:
        return tuple(proposal[start - n:])
    return (*committed[start:], *proposal)


@dataclass(slots=True)
class DraftToken:
    """One draft as the worker reported it: the token, its distribution's entropy (nats) and
    the probability of its top choice."""

    token: int
    entropy: float = 0.0
    top_prob: float = 1.0


@dataclass(slots=True)
class RemoteChain:
    """The newest epoch's chain as received: drafts for positions ``base, base+1, ...``.

    A draft is usable only if every earlier chain token that has since been committed equals the
    committed token: the worker drafted it conditioned on the right prefix.  Once the committed
    prefix disagrees with the chain, the chain is *dead* until a newer epoch arrives (the worker
    rolls back when it receives our commit).
    """

    epoch: int = -1
    base: int = 0
    drafts: list[DraftToken] = field(default_factory=list)
    dead: bool = True  # nothing received yet
    received: int = 0
    stale_dropped: int = 0
    last_arrival: float | None = None

    @property
    def end(self) -> int:
        """One past the last position the chain covers."""
        return self.base + len(self.drafts)

    def on_drafts(self, epoch: int, base: int, drafts: Sequence[DraftToken], now: float) -> bool:
        """Add received drafts; False if they were stale or non-contiguous (dropped)."""
        self.received += len(drafts)
        if epoch < self.epoch or (epoch == self.epoch and self.dead):
            self.stale_dropped += len(drafts)
            return False
        if epoch > self.epoch:
            self.epoch, self.base, self.drafts, self.dead = epoch, base, [], False
        # the worker streams a chain in order; anything else is a bug/loss
        if base != self.end:
            self.stale_dropped += len(drafts)
            return False
        self.drafts.extend(drafts)
        self.last_arrival = now
        return True

    def sync(self, committed: Sequence[int]) -> list[tuple[int, DraftToken]]:
        """Drop the part of the chain that is committed; mark dead on disagreement.

        Returns the drafts this compared with a committed token, as ``(position, draft)``, up to
        and including the first that disagreed: each is a judged draft (see
        :class:`~wanspec.core.estimates.AcceptanceModel`).
        """
        if self.dead:
            return []
        n = len(committed)
        if self.base >= n:  # the usual case: nothing of the chain is committed yet
            self.dead = self.base > n  # (an honest worker only knows our commits)
            return []
        upto = min(n, self.end)
        judged = []
        for pos in range(self.base, upto):
            draft = self.drafts[pos - self.base]
            judged.append((pos, draft))
            if draft.token != committed[pos]:
                self.dead = True
                self.drafts = []
                return judged
        # keep only drafts for uncommitted positions; shift the base forward (if the chain has
        # not reached the committed end yet, the worker is still drafting those positions)
        del self.drafts[: upto - self.base]
        self.base = upto
        return judged

    def window(self, n: int, k: int) -> list[DraftToken]:
        """Up to ``k`` usable drafts for positions ``n, n+1, ...`` (requires :meth:`sync` first)."""
        if self.dead or self.base != n:
            return []
        return self.drafts[:k]

    def pending_catch_up(self, n: int) -> int:
        """How many committed positions the live chain still has to cover before reaching ``n``."""
        if self.dead:
            return 0
        return max(0, n - self.end)
