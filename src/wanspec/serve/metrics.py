"""Prometheus metrics of the controller's service: vLLM's names, plus the WAN's own.

The ``vllm:`` metrics carry vLLM's names, label sets (``model_name``, ``engine``) and buckets
(``vllm/v1/metrics/loggers.py``, ``vllm/v1/spec_decode/metrics.py``), so dashboards and tools
made for vLLM read them unchanged.  The ``wanspec:`` metrics describe what no single-site engine
has: the round trip to each worker, what became of the worker's drafts, where the draft passes
ran, and when and why a request decoded without its worker.

Every per-request figure comes from the engine's :class:`~wanspec.runtime.engine.GenerationResult`
(``metrics``), recorded once when the request ends; latencies are the API's own clock (arrival
of the HTTP request to first token / to the end).
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from wanspec.runtime.controller import RemoteEngine

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
# a WAN round trip: a metro link to an intercontinental one, and a congested one
RTT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
               0.75, 1.0, 2.0, 5.0]
FINISH_REASONS = ("stop", "length", "abort")
NO_WORKER = "none"  # the worker label of requests that decoded without one


def fallback_reason(message: str | None) -> str:
    """A short, bounded label for why a request went on without its worker (the full message
    is in the controller's log)."""
    if message is None:
        return "no_worker"
    m = message.lower()
    if "refused the request" in m:
        return "refused"
    if "protocol error" in m or "did not answer with hello" in m or "worker error" in m:
        return "protocol_error"
    if "handshake" in m:
        return "handshake_timeout"
    if "closed" in m or "reset" in m:
        return "connection_lost"
    if "refused" in m or "cannot reach" in m or "timed out" in m or "unreachable" in m:
        return "unreachable"
    return "other"


class _WorkerState(Collector):
    """Per-worker gauges read at scrape time from the engine's pool."""

    def __init__(self, engine: RemoteEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily("wanspec:worker_up", "1 while the link to the worker is up.",
                               labels=["model_name", "worker"])
        live = GaugeMetricFamily("wanspec:worker_requests_running",
                                 "Requests drafting on the worker now.",
                                 labels=["model_name", "worker"])
        rtt = GaugeMetricFamily("wanspec:worker_rtt_estimate_seconds",
                                "The link's smoothed RTT estimate (what placement uses).",
                                labels=["model_name", "worker"])
        demand = GaugeMetricFamily("wanspec:worker_demand",
                                   "The worker's reported load: live sessions per pass slot.",
                                   labels=["model_name", "worker"])
        pool = self.engine.workers
        if pool is not None:
            for link, counts in zip(pool.links, pool.counts):
                labels = [self.model_name, link.name]
                up.add_metric(labels, 1.0 if link.up else 0.0)
                live.add_metric(labels, counts.live)
                if link.rtt is not None:
                    rtt.add_metric(labels, link.rtt)
                report = link.core.worker_load
                if report is not None:
                    demand.add_metric(labels, report.demand)
        return [up, live, rtt, demand]


class ServerMetrics:
    """The controller service's registry; one per app (tests run several side by side)."""

    def __init__(self, engine: RemoteEngine, model_name: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_name = model_name
        r, names = self.registry, ["model_name", "engine"]
        self._labels = (model_name, "0")
        # ---- vLLM's ---------------------------------------------------------------------------
        running = Gauge("vllm:num_requests_running",
                        "Number of requests in model execution batches.", names, registry=r)
        waiting = Gauge("vllm:num_requests_waiting",
                        "Number of requests waiting to be processed.", names, registry=r)
        admission = engine.accelerator.admission
        running.labels(*self._labels).set_function(lambda: len(admission.running))
        waiting.labels(*self._labels).set_function(lambda: len(admission.waiting))
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     names, registry=r).labels(*self._labels)
        self.generation_tokens = Counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.", names,
                                         registry=r).labels(*self._labels)
        self.success = Counter("vllm:request_success",
                               "Count of successfully processed requests.",
                               names + ["finished_reason"], registry=r)
        for reason in FINISH_REASONS:
            self.success.labels(*self._labels, reason)
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", names,
                              buckets=TTFT_BUCKETS, registry=r).labels(*self._labels)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", names,
                             buckets=ITL_BUCKETS, registry=r).labels(*self._labels)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", names,
                             buckets=REQUEST_LATENCY_BUCKETS, registry=r).labels(*self._labels)
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.", names,
                               buckets=REQUEST_LATENCY_BUCKETS, registry=r).labels(*self._labels)
        self.spec_drafts = Counter("vllm:spec_decode_num_drafts",
                                   "Number of spec decoding drafts.", names,
                                   registry=r).labels(*self._labels)
        self.spec_draft_tokens = Counter("vllm:spec_decode_num_draft_tokens",
                                         "Number of draft tokens.", names,
                                         registry=r).labels(*self._labels)
        self.spec_accepted = Counter("vllm:spec_decode_num_accepted_tokens",
                                     "Number of accepted tokens.", names,
                                     registry=r).labels(*self._labels)
        self.spec_per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos",
                                    "Accepted tokens per draft position.", names + ["position"],
                                    registry=r)
        # ---- wanspec's: the WAN ------------------------------------------------------------------
        wl = ["model_name", "worker"]
        self.rtt = Histogram("wanspec:worker_rtt_seconds",
                             "Round trips to each worker (handshake and pings).", wl,
                             buckets=RTT_BUCKETS, registry=r)
        self.drafts_received = Counter("wanspec:remote_drafts_received",
                                       "Draft tokens received from the worker.", wl, registry=r)
        self.drafts_used = Counter("wanspec:remote_drafts_used",
                                   "Worker draft tokens the target accepted.", wl, registry=r)
        self.drafts_stale = Counter("wanspec:remote_drafts_stale",
                                    "Worker draft tokens dropped on arrival (an old chain).", wl,
                                    registry=r)
        self.drafts_late = Counter("wanspec:remote_drafts_late",
                                   "Worker draft tokens that arrived after their position was "
                                   "committed.", wl, registry=r)
        self.draft_passes = Counter("wanspec:draft_passes",
                                    "Draft passes by site: busy (the controller's accelerator) or "
                                    "worker.", ["model_name", "site"], registry=r)
        self.draft_tokens = Counter("wanspec:spec_decode_draft_tokens",
                                    "Draft tokens by source: worker (received) or local (drafted "
                                    "at the busy site).", ["model_name", "source"], registry=r)
        self.accepted_tokens = Counter("wanspec:spec_decode_accepted_tokens",
                                       "Accepted draft tokens by source: worker or local.",
                                       ["model_name", "source"], registry=r)
        self.fallbacks = Counter("wanspec:local_fallbacks",
                                 "Requests that went on without a worker, by reason.",
                                 ["model_name", "reason"], registry=r)
        self.stall = Counter("wanspec:stall_seconds",
                             "Seconds requests waited for worker drafts with nothing to run.",
                             ["model_name"], registry=r).labels(model_name)
        self.rides = Counter("wanspec:rides",
                             "Target passes joined by requests waiting for their worker.",
                             ["model_name"], registry=r).labels(model_name)
        for site in ("busy", "worker"):
            self.draft_passes.labels(model_name, site)
        for source in ("worker", "local"):
            self.draft_tokens.labels(model_name, source)
            self.accepted_tokens.labels(model_name, source)
        r.register(_WorkerState(engine, model_name))
        if engine.workers is not None:
            for link in engine.workers.links:
                hist = self.rtt.labels(model_name, link.name)
                link.core.on_rtt_sample = hist.observe

    # ---- what requests report ---------------------------------------------------------------
    def first_token(self, ttft_s: float) -> None:
        self.ttft.observe(ttft_s)

    def output_event(self, gap_s: float) -> None:
        """Tokens committed together (one verification) are one event, as in vLLM."""
        self.itl.observe(gap_s)

    def finished(self, m: dict[str, Any], *, prompt_tokens: int, output_tokens: int,
                 finish_reason: str, e2e_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.success.labels(*self._labels, finish_reason).inc()
        self.e2e.observe(e2e_s)
        self.queue.observe(m.get("queued_s", 0.0))
        self.spec_drafts.inc(m["verify_rounds"])
        self.spec_draft_tokens.inc(m["drafted_tokens"])
        self.spec_accepted.inc(m["accepted_tokens"])
        for pos, n in enumerate(m.get("accepted_per_position", ())):
            self.spec_per_pos.labels(*self._labels, str(pos)).inc(n)
        name = self.model_name
        worker = m.get("worker") or NO_WORKER
        # a request that moved drafted on several workers: each is credited with its own drafts
        by_worker = m.get("remote_drafts_by_worker") or {
            worker: {"received": m["remote_drafts_received"],
                     "accepted": m["remote_drafts_accepted"]}}
        for w, counts in by_worker.items():
            self.drafts_received.labels(name, w).inc(counts["received"])
            self.drafts_used.labels(name, w).inc(counts["accepted"])
        self.drafts_stale.labels(name, worker).inc(m.get("remote_drafts_stale", 0))
        self.drafts_late.labels(name, worker).inc(m.get("remote_drafts_late", 0))
        busy_drafts = m["draft_passes"].get("controller", 0)
        self.draft_passes.labels(name, "busy").inc(busy_drafts)
        self.draft_tokens.labels(name, "worker").inc(m["remote_drafts_received"])
        self.draft_tokens.labels(name, "local").inc(busy_drafts)
        self.accepted_tokens.labels(name, "worker").inc(m["remote_drafts_accepted"])
        self.accepted_tokens.labels(name, "local").inc(
            max(m["accepted_tokens"] - m["remote_drafts_accepted"], 0))
        self.stall.inc(m["stall_s"])
        self.rides.inc(m["rides"])
        if m.get("worker_lost") is not None and not m.get("worker_at_end", False):
            # (a request that lost a worker but moved to another did not fall back)
            self.fallbacks.labels(name, fallback_reason(m["worker_lost"])).inc()
        elif not m.get("worker_used", True):
            self.fallbacks.labels(name, "no_worker").inc()

    def worker_passes(self, passes: int) -> None:
        """The worker's own account of a finished session's draft passes (it comes after)."""
        self.draft_passes.labels(self.model_name, "worker").inc(passes)

    def aborted(self, *, prompt_tokens: int, output_tokens: int, e2e_s: float) -> None:
        """A request its client left: counted as vLLM counts an aborted one."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(output_tokens)
        self.success.labels(*self._labels, "abort").inc()
        self.e2e.observe(e2e_s)
