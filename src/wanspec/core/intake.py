"""What a worker's drafts must satisfy before they reach a request's draft tree.

Every rule here is a bound an honest worker never reaches: its messages are well formed, it
drafts at most its lookahead past what it knows is committed and never past the session's end,
it sends a bounded number of messages per commit, and a bundle holds one item a lane.  A worker
breaking one is dropped for the request (:class:`~wanspec.core.controller.ControllerCore`), which
goes on without it, with the same output.  Pure functions: the controller passes in what it
knows (its commits, the lookahead it granted, the vocabulary).
"""

from __future__ import annotations

import math

from wanspec.core.chain import DraftToken
from wanspec.protocol.messages import Drafts, DraftsBundle, unbundle


def unpack(msg: Drafts | DraftsBundle, lanes: int) -> list[Drafts] | str:
    """The Drafts that ``msg`` carries (a bundle's items, in order); or why no honest worker
    sends it.  ``lanes``: the most lanes the session may hold (one item a lane, checked before
    the bundle is unpacked)."""
    if isinstance(msg, Drafts):
        return [msg]
    if len(msg.lanes) > lanes:
        return f"a DraftsBundle of {len(msg.lanes)} items for {lanes} lanes"
    items = unbundle(msg)
    return "a DraftsBundle whose arrays do not fit together" if items is None else items


def drafts_problem(msg: Drafts, *, limit: int, vocab: int | None) -> str | None:
    """Why ``msg`` cannot come from an honest worker, or None.  ``limit``: one past the last
    position the worker may draft (the lookahead past our commits, capped by the session's end:
    a chain growing beyond it is a worker trying to fill our memory)."""
    n = len(msg.tokens)
    if n == 0 or len(msg.entropy) not in (0, n) or len(msg.top_prob) not in (0, n):
        return "Drafts with inconsistent lengths"
    if type(msg.epoch) is not int or type(msg.base) is not int or msg.epoch < 0 or msg.base < 0:
        return "Drafts with an invalid epoch or position"
    end = msg.base + n
    if end > limit:
        return f"Drafts up to position {end}, past the {limit} the worker was allowed"
    for t in msg.tokens:
        if type(t) is not int or t < 0 or (vocab is not None and t >= vocab):
            return f"draft token {t!r} outside the vocabulary"
    for x in (*msg.entropy, *msg.top_prob):
        if not isinstance(x, (int, float)) or not 0.0 <= x < math.inf:
            return f"draft statistic {x!r} is not a finite non-negative number"
    return None


def drafts_allowance(*, lookahead: int, commits: int, tokens: int, lanes: int) -> int:
    """Twice the most Drafts an honest worker can have sent after ``commits`` commits of
    ``tokens`` tokens in all (a bundle's items count one each).

    It sends one per draft pass and lane, and drafts at most its lookahead ``L`` past what we
    committed: ``L`` for the first chain, and after a commit of ``k`` tokens either ``k`` more
    (its chain held) or a new chain of ``L`` -- at most ``L * (commits + 1) + tokens`` a lane.
    Past that, its messages are a flood: each costs the request time while its own pass results
    wait behind them.
    """
    per_lane = 2 * (lookahead * (commits + 1) + tokens) + 16
    return per_lane * lanes


def draft_tokens(msg: Drafts) -> list[DraftToken]:
    """The drafts of ``msg`` (statistics it left out: entropy 0, top probability 1)."""
    n = len(msg.tokens)
    entropy = msg.entropy or (0.0,) * n
    top_prob = msg.top_prob or (1.0,) * n
    return [DraftToken(t, float(e), float(p)) for t, e, p in zip(msg.tokens, entropy, top_prob)]
