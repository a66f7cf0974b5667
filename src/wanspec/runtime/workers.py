"""The workers one controller may draft on: a :class:`WorkerLink` each, requests placed among them.

Which worker a request uses is decided by :func:`~wanspec.core.placement.choose_worker` from
what each link knows (handshake done, RTT, reported load) and what the requests placed on it
learned (the pace of its chains, how often its drafts are accepted).  This adapter only connects
links, keeps the counts, and routes a request's messages to the queue of its driver.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from wanspec.core.estimates import Estimates
from wanspec.core.placement import WorkerView, choose_worker

if TYPE_CHECKING:  # (the links are made by runtime.controller, which uses this pool)
    from wanspec.runtime.controller import WorkerLink

log = logging.getLogger("wanspec.controller")


@dataclass
class WorkerCounts:
    """Per-worker figures for logs, results and metrics."""

    placed: int = 0  # requests placed on it (first placement or a move)
    lost: int = 0  # requests that lost it mid-way (it failed, refused or misbehaved)
    live: int = 0  # requests on it now


class WorkerPool:
    """Several workers (or one): connect on demand, place requests, move them on failure."""

    def __init__(self, links: Sequence[WorkerLink], estimates: Estimates) -> None:
        if not links:
            raise ValueError("a worker pool needs at least one worker")
        self.links = list(links)
        # one worker: every request shares the engine's estimates, as a single link always did;
        # several: each keeps its own worker-side estimates (see Estimates.for_worker)
        self.estimates = ([estimates] if len(links) == 1 else
                          [estimates.for_worker(link.core.rtt, link.core.worker_demand)
                           for link in links])
        self.counts = [WorkerCounts() for _ in links]
        self._connecting: set[asyncio.Task[bool]] = set()

    def name(self, index: int) -> str:
        return self.links[index].name

    def views(self) -> list[WorkerView]:
        """What placement knows about each worker now."""
        out = []
        for link, est, counts in zip(self.links, self.estimates, self.counts):
            report = link.core.worker_load
            out.append(WorkerView(
                name=link.name, up=link.up, rtt_s=est.rtt.get,
                draft_interval_s=est.draft_interval.get,
                demand=report.demand if report is not None else 0.0,
                acceptance=est.acceptance.pooled, requests=counts.live))
        return out

    async def place(self, exclude: frozenset[int] = frozenset()) -> int | None:
        """The worker a request should use (not one in ``exclude``), or None if none is usable.

        Workers already connected are chosen among at once; the others are connected in the
        background (each respecting its back-off) so that later requests may use them.  Only when
        no candidate is connected does the request wait for the connection attempts (bounded by
        each link's connect and handshake timeouts).
        """
        candidates = [i for i in range(len(self.links)) if i not in exclude]
        down = [self.links[i] for i in candidates if not self.links[i].up]
        if down and len(down) == len(candidates):
            await asyncio.gather(*(link.ensure() for link in down))
        else:
            for link in down:
                self._connect_later(link)
        return choose_worker(self.views(), exclude)

    def _connect_later(self, link: WorkerLink) -> None:
        task = asyncio.create_task(link.ensure())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def attach(self, index: int, rid: int, queue: asyncio.Queue[Any]) -> None:
        """Request ``rid`` uses worker ``index``: its messages go to ``queue``."""
        self.links[index].route(rid, queue)
        self.counts[index].placed += 1
        self.counts[index].live += 1

    def detach(self, index: int, rid: int, *, lost: bool = False) -> None:
        self.links[index].unroute(rid)
        self.counts[index].live -= 1
        if lost:
            self.counts[index].lost += 1
            if len(self.links) > 1:
                log.info("request %d lost worker %s; placing it again", rid, self.name(index))

    def describe(self) -> list[dict[str, Any]]:
        """Per-worker state: for the results and logs."""
        out = []
        for view, counts, link, est in zip(self.views(), self.counts, self.links, self.estimates):
            judged = sum(est.acceptance.trials) > 0  # (else the acceptance is only the prior)
            out.append({"worker": view.name, "up": view.up,
                        "rtt_ms": 1000 * link.rtt if link.rtt is not None else None,
                        "demand": view.demand,
                        "acceptance": round(view.acceptance, 4) if judged else None,
                        "placed": counts.placed, "lost": counts.lost, "live": counts.live,
                        "last_error": link.last_error})
        return out

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        for link in self.links:
            await link.close()
