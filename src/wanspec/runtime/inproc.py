"""Controller and worker in one process over an in-process WAN link (``--mode remote``, emulate).

Each site has its own device: the worker's draft passes never contend with the busy site's
target, while the controller's local draft copy shares the target's device, as on one GPU.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from wanspec.core.admission import Admission
from wanspec.core.batcher import BatchLimits
from wanspec.core.controller import ControllerConfig
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH
from wanspec.models.backend import CausalLM
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.engine import GenerationResult, TimingConfig
from wanspec.runtime.worker import WorkerService
from wanspec.timing import clock
from wanspec.timing.device import Device
from wanspec.transport.base import Connection, ConnectionClosed
from wanspec.transport.inproc import InprocConnection, LinkParams, inproc_pair


class InprocDeployment:
    """A worker site and a controller site joined by an emulated link; use as ``async with``."""

    def __init__(self, target: CausalLM, draft: CausalLM, *, link: LinkParams,
                 timing: TimingConfig | None = None, config: ControllerConfig | None = None,
                 local_draft: bool = True, limits: BatchLimits | None = None,
                 admission: Admission | None = None, auth_key: bytes | None = None,
                 worker_max_batch: int = DEFAULT_WORKER_MAX_BATCH) -> None:
        """``limits``: the busy site's passes; ``worker_max_batch``: sequences per worker draft
        pass (as ``wanspec worker --max-batch``).  ``auth_key``: a pre-shared key both sites prove in the handshake (None: none; it
        costs no extra round trip, so emulated timings are the same either way)."""
        self.params = link
        self.timing = timing or TimingConfig()
        self.worker_device = Device("worker")
        # each site runs its passes on its own thread; the threads end with the deployment
        worker_draft = draft.sibling("worker-draft")
        local = draft.sibling("local-draft") if local_draft else None
        self._siblings = [m for m in (worker_draft, local) if m is not None]
        self.service = WorkerService(worker_draft, cost=self.timing.draft,
                                     device=self.worker_device,
                                     max_batch=worker_max_batch,
                                     auth_key=auth_key)
        self.worker_alive = True
        self._ends: list[InprocConnection] = []
        self._handlers: list[asyncio.Task[None]] = []
        self._seed = link.seed
        self.link = WorkerLink(self._connect, RemoteEngine.hello_for(target),
                               rtt_prior_s=link.rtt_ms / 1000.0, auth_key=auth_key)
        self.engine = RemoteEngine(target, self.link, local_draft=local, timing=self.timing,
                                   config=config, limits=limits, admission=admission)

    async def _connect(self) -> Connection:
        if not self.worker_alive:
            raise ConnectionClosed("worker is down")
        params = LinkParams(**{**self.params.__dict__, "seed": self._seed})
        self._seed += 1
        controller_end, worker_end = inproc_pair(params)
        self._ends += [controller_end, worker_end]
        # the worker's tasks are its site's host work (a loop charging the host keeps each
        # site's on its own timeline, as on two machines)
        self._handlers.append(asyncio.create_task(self.service.handle(worker_end),
                                                  context=clock.site_context("worker")))
        return controller_end

    def kill_worker(self) -> None:
        """The worker site dies: links cut, nothing in flight arrives, no reconnection."""
        self.worker_alive = False
        for end in self._ends:
            end.kill()

    async def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> GenerationResult:
        """One request; worker figures are this request's (the worker's own session account)."""
        st = self.worker_device.stats
        worker0 = st.copy()
        up0, down0 = self._wire_bytes()
        result = await self.engine.agenerate(prompt, **kwargs)
        rid = result.metrics["request_id"]
        stats = {}
        if result.metrics["worker_used"] and self.link.up:
            # the worker reports after our Cancel: about one RTT later (virtual time if emulated)
            stats = await self.link.wait_stats([rid], timeout=2 * self.params.rtt_ms / 1000 + 1.0)
        passes = stats[rid].passes if rid in stats else st.passes - worker0.passes
        result.metrics["draft_passes"]["worker"] = passes
        if rid in stats:
            result.metrics["worker_wasted_passes"] = stats[rid].wasted
        up, down = self._wire_bytes()
        # what crossed the link while the request ran (its own traffic when it ran alone;
        # shared with the requests that ran beside it otherwise): frames, headers included
        result.metrics["wire_bytes"] = {"worker_to_controller": down - down0,
                                        "controller_to_worker": up - up0}
        result.devices[self.worker_device.name] = st.report(since=worker0)
        return result

    def _wire_bytes(self) -> tuple[int, int]:
        """Bytes sent so far on every connection: (controller to worker, worker to controller)."""
        return (sum(end.sent.bytes for end in self._ends[0::2]),
                sum(end.sent.bytes for end in self._ends[1::2]))

    async def __aenter__(self) -> "InprocDeployment":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close()
        for end in self._ends:
            await end.close()
        for t in self._handlers:
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for lm in self._siblings:
            lm.close()  # a pass still running finishes; its thread then exits


def remote_generate(target: CausalLM, draft: CausalLM, prompt: str | Sequence[int], *,
                    rtt_ms: float, jitter_ms: float = 0.0, policy: str = "adaptive",
                    gamma: int = 4, timing: TimingConfig | None = None,
                    branches: int = ControllerConfig.branches,
                    **kwargs: Any) -> GenerationResult:
    """One request through controller + worker over an in-process link (virtual time if emulated)."""
    from wanspec.core.policy import PolicyConfig, PolicyName
    from wanspec.errors import WanspecError

    try:
        name = PolicyName(policy)
    except ValueError:
        raise WanspecError(f"unknown policy {policy!r}; choose from "
                           f"{', '.join(p.value for p in PolicyName)}") from None
    timing = timing or TimingConfig()
    config = ControllerConfig(gamma=gamma, policy=PolicyConfig(name), branches=branches)
    link = LinkParams(rtt_ms=rtt_ms, jitter_ms=jitter_ms)

    async def main() -> GenerationResult:
        async with InprocDeployment(target, draft, link=link, timing=timing, config=config,
                                    local_draft=name is not PolicyName.REMOTE) as dep:
            return await dep.generate(prompt, **kwargs)

    return timing.run(main)
