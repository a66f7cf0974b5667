"""A local draft round run in one call to the device (``RunDraft.count``): the one rule for
what each of its passes feeds, shared by the runtime's models and the simulators.

Pass 0 of a round feeds the action's own tokens at its ``start``; pass ``i`` feeds the token
pass ``i - 1`` proposed, at the position it was proposed for.  Many requests' rounds run side by
side, pass by pass (one batched forward each): a round of fewer passes drops out of the later
ones.  What each pass proposes is the driver's (``one_pass``); this only sequences them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

from wanspec.core.actions import DraftDone, RunDraft


class RoundFeed(NamedTuple):
    """One request's part of one pass of a round: cut to ``start``, feed ``tokens``."""

    index: int  # which of the rounds run together
    start: int
    tokens: tuple[int, ...]


def _feed(index: int, action: RunDraft, step: int, last: int) -> RoundFeed:
    """Pass ``step`` of ``action``'s round: its own tokens first, then the token ``last`` that
    the pass before proposed, at the position it was proposed for."""
    if step == 0:
        return RoundFeed(index, action.start, action.tokens)
    return RoundFeed(index, action.position + step - 1, (last,))


def round_feeds(actions: Sequence[RunDraft], step: int,
                proposed: Sequence[Sequence[DraftDone]]) -> list[RoundFeed]:
    """The feeds of pass ``step`` of ``actions``' rounds, given what each proposed so far
    (rounds that stopped early, having proposed fewer than ``step``, are left out)."""
    return [_feed(i, a, step, proposed[i][-1].token if step else 0)
            for i, a in enumerate(actions) if step < a.count and len(proposed[i]) == step]


def run_rounds(actions: Sequence[RunDraft],
               one_pass: Callable[[int, list[RoundFeed]], Sequence[DraftDone | None]]
               ) -> list[DraftDone | None]:
    """Run every action's ``count`` passes, a batch of feeds per pass (``one_pass(step, feeds)``
    answers each feed with its proposal, or None when its request left: its round ends there
    and its result is None).  Each result is the round's first proposal with the others in
    ``rest``."""
    proposed: list[list[DraftDone]] = [[] for _ in actions]
    left = [False] * len(actions)
    for step in range(max((a.count for a in actions), default=0)):
        feeds = [f for f in round_feeds(actions, step, proposed) if not left[f.index]]
        if not feeds:
            break
        for feed, done in zip(feeds, one_pass(step, feeds)):
            if done is None:
                left[feed.index] = True
            else:
                proposed[feed.index].append(done)
    return [None if gone or not got else dataclasses.replace(got[0], rest=tuple(got[1:]))
            for gone, got in zip(left, proposed)]


def round_shapes(actions: Sequence[RunDraft]) -> list[list[RoundFeed]]:
    """Each pass's feeds for ``actions`` run to their full ``count`` (what the device is charged:
    the tokens a later pass feeds are known in number before they are drafted)."""
    return [[_feed(i, a, step, 0) for i, a in enumerate(actions) if step < a.count]
            for step in range(max((a.count for a in actions), default=0))]
