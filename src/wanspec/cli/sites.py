"""``wanspec worker``, ``wanspec controller`` and ``wanspec certs``: two real sites."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from wanspec.cli.common import check
from wanspec.cli.loading import load_models, timing_from_flags
from wanspec.cli.render import print_generation
from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyConfig, PolicyName
from wanspec.core.worker import WorkerLimits
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import draft_path
from wanspec.protocol.codec import DEFAULT_FRAME_TIMEOUT_S
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.sampling import SamplingParams
from wanspec.timing.device import PassCost
from wanspec.transport import factory

log = logging.getLogger("wanspec")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def check_limits(limits: WorkerLimits, frame_timeout: float) -> None:
    """One-line errors for limits that make no sense, before any model loads."""
    for flag, value in (("--max-connections", limits.max_connections),
                        ("--max-sessions", limits.max_sessions),
                        ("--max-connection-sessions", limits.max_connection_sessions),
                        ("--max-prompt", limits.max_prompt),
                        ("--max-lookahead", limits.max_lookahead)):
        check(value >= 1, f"{flag} must be >= 1, got {value}")
    for flag, seconds in (("--hello-timeout", limits.hello_timeout_s),
                          ("--frame-timeout", frame_timeout)):
        check(math.isfinite(seconds) and seconds > 0, f"{flag} must be > 0 seconds, got {seconds}")
    check(math.isfinite(limits.idle_timeout_s) and limits.idle_timeout_s >= 0,
          f"--idle-timeout must be >= 0 seconds (0 = never), got {limits.idle_timeout_s}")


def run_worker(*, listen: str, transport: str, draft: Path | None, cert: Path | None,
               key: Path | None, draft_ms: float | None, dtype: str, device: str,
               console: Console, max_batch: int = 64, limits: WorkerLimits | None = None,
               frame_timeout: float = DEFAULT_FRAME_TIMEOUT_S) -> None:
    limits = limits or WorkerLimits()
    check_limits(limits, frame_timeout)
    check(max_batch >= 1, f"--max-batch must be >= 1, got {max_batch}")
    lm = CausalLM(draft_path(draft), dtype=dtype, device=device, name="draft")
    service = WorkerService(lm, cost=PassCost(draft_ms) if draft_ms is not None else None,
                            limits=limits, max_batch=max_batch)

    async def main() -> None:
        server = await factory.serve(transport, listen, service.handle, cert=cert, key=key,
                                     frame_timeout=frame_timeout)
        host, port = server.address
        console.print(f"wanspec worker listening on {transport}://{host}:{port} "
                      f"(draft {lm.path}, tokenizer {service.fingerprint}, "
                      f"up to {max_batch} sessions per draft pass)", soft_wrap=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # pragma: no cover - non-Unix
                pass
        await stop.wait()
        await server.close()
        console.print("wanspec worker stopped")

    asyncio.run(main())


def run_controller(*, worker: str, transport: str, target: Path | None, draft: Path | None,
                   local_draft: bool, prompts: Sequence[str], max_tokens: int, gamma: int,
                   policy: str, max_slowdown: float, sampling: SamplingParams,
                   stop: Sequence[str], ignore_eos: bool,
                   ca: Path | None, insecure: bool, tls: bool, timeout_s: float,
                   target_ms: float | None, draft_ms: float | None, dtype: str, device: str,
                   as_json: bool, console: Console, exact: bool = False) -> None:
    check(gamma >= 1, f"--gamma must be >= 1, got {gamma}")
    check(max_tokens >= 1, f"--max-tokens must be >= 1, got {max_tokens}")
    check(max_slowdown >= 1.0, f"--max-slowdown must be >= 1, got {max_slowdown}")
    try:
        pname = PolicyName(policy)
    except ValueError:
        raise WanspecError(f"unknown policy {policy!r}; choose from "
                           f"{', '.join(p.value for p in PolicyName)}") from None
    factory.parse_address(worker)  # fail fast on a malformed address
    timing = timing_from_flags(target_ms, draft_ms)
    tgt, drf = load_models(target, draft, need_draft=local_draft, dtype=dtype, device=device,
                           exact=exact)
    if not local_draft:
        drf = None
        pname = PolicyName.REMOTE

    async def connector():
        return await factory.connect(transport, worker, tls=tls, ca=ca, insecure=insecure,
                                     timeout=timeout_s)

    async def main() -> list[dict[str, Any]]:
        link = WorkerLink(connector, RemoteEngine.hello_for(tgt), hello_timeout=timeout_s)
        config = ControllerConfig(gamma=gamma,
                                  policy=PolicyConfig(pname, max_slowdown=max_slowdown))
        engine = RemoteEngine(tgt, link, local_draft=drf, timing=timing, config=config)
        out = []
        try:
            for p in prompts:
                r = await engine.agenerate(p, max_tokens=max_tokens, sampling=sampling,
                                           stop_strings=stop, ignore_eos=ignore_eos)
                out.append(r.to_dict())
            rids = [o["metrics"]["request_id"] for o in out if o["metrics"]["worker_used"]]
            rtt = link.rtt or 0.0
            stats = await link.wait_stats(rids, timeout=min(2.0, 4 * rtt + 0.5)) if rids else {}
            for o in out:
                st = stats.get(o["metrics"]["request_id"])
                o["metrics"]["draft_passes"]["worker"] = st.passes if st else 0
                o["metrics"]["worker_wasted_passes"] = st.wasted if st else 0
                o["metrics"]["worker_rtt_ms"] = 1000 * rtt if link.rtt is not None else None
                if link.last_error and not o["metrics"]["worker_used"]:
                    o["metrics"]["worker_error"] = link.last_error
        finally:
            await link.close()
        return out

    results = asyncio.run(main())
    if as_json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    else:
        for r in results:
            print_generation(r, console)
