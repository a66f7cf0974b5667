"""Which worker a request drafts on, when a controller knows several (sans-I/O).

A request gains from a worker through the drafts it accepts, and loses to it the wait after every
rejection: the worker hears of the commit half a round trip later, drafts, and the new draft
takes the other half back.  So a worker is worth choosing by the *wait per accepted draft*::

    resync_s   = rtt + draft_interval * max(demand, 1)     # commit -> first new draft here
    run_tokens = acceptance / (1 - acceptance)             # drafts accepted between rejections
    cost       = resync_s / (run_tokens + 1)               # (+1: the correction token itself)

``demand`` is the worker's reported live sessions per pass slot: above 1 its drafts come that
much slower.  Lower cost is better.  Workers whose costs are within ``ALIKE`` of the best are
treated as equal -- their RTT estimates are averages of noisy samples, and the load they report
lags behind a burst of our own requests -- and among those the one with fewer of our requests
wins (then the order the user gave): a burst is spread instead of piled on whichever worker's
last ping was a hair faster.  Only workers whose handshake completed are placed on; a request whose
worker fails (or refuses it as overloaded) is placed again among the others, each worker at most
once per request, and decodes at the busy site alone only when none is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MAX_ACCEPTANCE = 0.95  # an estimate of 1 would make every worker's run endless: cap the run
ALIKE = 0.10  # relative difference in expected wait below which two workers count as equal


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the controller knows about one worker when it places a request."""

    name: str
    up: bool  # handshake completed, connection open
    rtt_s: float
    draft_interval_s: float  # time between consecutive drafts of a live chain on this worker
    demand: float  # its reported sessions per pass slot (0: not reported)
    acceptance: float  # how often the target accepts its drafts (learned; a prior at first)
    requests: int = 0  # this controller's requests on it now


def wait_per_accepted_draft(w: WorkerView) -> float:
    """Expected seconds a request waits for this worker per draft it accepts (see module doc)."""
    resync_s = w.rtt_s + w.draft_interval_s * max(w.demand, 1.0)
    a = min(max(w.acceptance, 0.0), MAX_ACCEPTANCE)
    return resync_s / (a / (1.0 - a) + 1.0)


def choose_worker(workers: Sequence[WorkerView], exclude: frozenset[int] = frozenset()
                  ) -> int | None:
    """Index of the worker to place a request on, or None if no worker is usable.

    ``exclude``: indices this request already used and lost (failed or refused it).
    """
    usable = [i for i, w in enumerate(workers) if w.up and i not in exclude]
    if not usable:
        return None
    best = min(wait_per_accepted_draft(workers[i]) for i in usable)
    alike = [i for i in usable if wait_per_accepted_draft(workers[i]) <= best * (1 + ALIKE)]
    return min(alike, key=lambda i: (workers[i].requests, i))
