"""The worker's own ``/metrics`` and ``/health`` (``wanspec worker --metrics-port``).

What an operator of the cheap site watches: the controllers and sessions it serves, how full its
draft passes are, how many drafts it sends, how busy its device is.  Counts are read from the
:class:`~wanspec.runtime.worker.WorkerService` at scrape time; batch sizes are observed pass by
pass (the shared accelerator's ``on_pass``).
"""

from __future__ import annotations

from typing import Any, Iterable

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wanspec import __version__
from wanspec.core.batcher import PassKind
from wanspec.core.worker import WorkerStats
from wanspec.runtime.worker import WorkerService

BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def worker_totals(service: WorkerService) -> WorkerStats:
    """Every session's counts: of closed connections and of the open ones so far."""
    total = WorkerStats()
    total.add(service.totals)
    for core in service.active:
        total.add(core.stats)
    return total


class _WorkerCollector(Collector):
    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def collect(self) -> Iterable[Any]:
        svc = self.service
        totals = worker_totals(svc)
        gauges = [
            ("wanspec_worker:connections", "Open controller connections.", len(svc.active)),
            ("wanspec_worker:sessions", "Live sessions (requests drafting), all connections.",
             sum(len(c.sessions) for c in svc.active)),
            ("wanspec_worker:busy_fraction", "Fraction of the last 2 s the draft device was busy.",
             svc.load.busy),
            ("wanspec_worker:demand", "Live sessions per draft-pass slot (above 1: over "
             "capacity; lookaheads shrink).", svc.load.demand),
            ("wanspec_worker:max_batch", "Most sequences one draft pass carries (sessions and their "
             "draft trees' branch lanes).", svc.max_batch),
            ("wanspec_worker:branch_seats", "Sequences a draft pass carries before branch lanes stop: "
             "max_batch, or fewer where the measured passes stop being cheap (unless --no-fit-trees).",
             svc.load.seats),
            ("wanspec_worker:branch_lanes", "Branch lanes of the live sessions' draft trees.",
             svc.load.branches),
        ]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        counters = [
            ("wanspec_worker:draft_passes", "Batched draft passes run.",
             svc.accelerator.stats.passes),
            ("wanspec_worker:session_passes", "Draft passes by session (a batched pass counts "
             "once per session it carries).", totals.passes),
            ("wanspec_worker:drafts_sent", "Draft tokens streamed to controllers.",
             totals.drafted),
            ("wanspec_worker:wasted_passes", "Session passes void by the time they ended (the "
             "controller had moved on).", totals.wasted_passes),
            ("wanspec_worker:rollbacks", "Chains restarted after a commit disagreed.",
             totals.rollbacks),
            ("wanspec_worker:sessions_started", "Sessions started.", totals.sessions),
            ("wanspec_worker:connections_accepted", "Controller connections accepted.",
             svc.connections),
        ]
        for name, doc, value in counters:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], float(value))
            yield c


def create_worker_app(service: WorkerService,
                      registry: CollectorRegistry | None = None) -> FastAPI:
    """``/metrics`` and ``/health`` of a worker (no other endpoint: drafts go over the
    wanspec protocol, not HTTP)."""
    disable_created_metrics()
    reg = registry if registry is not None else CollectorRegistry()
    reg.register(_WorkerCollector(service))
    batch = Histogram("wanspec_worker:batch_size", "Sessions carried by each draft pass.",
                      buckets=BATCH_BUCKETS, registry=reg)
    previous = service.accelerator.on_pass

    def on_pass(kind: PassKind, requests: int, longest: int) -> None:
        if previous is not None:
            previous(kind, requests, longest)
        if kind is PassKind.DRAFT:
            batch.observe(requests)

    service.accelerator.on_pass = on_pass
    app = FastAPI(title="wanspec worker", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        totals = worker_totals(service)
        return {"status": "ok", "version": __version__, "model": service.draft.name,
                "tokenizer": service.fingerprint, "connections": len(service.active),
                "sessions": sum(len(c.sessions) for c in service.active),
                "max_batch": service.max_batch, "branch_seats": service.load.seats,
                "branch_lanes": service.load.branches, "busy": service.load.busy,
                "demand": service.load.demand, "draft_passes": service.accelerator.stats.passes,
                "drafts_sent": totals.drafted}

    return app
