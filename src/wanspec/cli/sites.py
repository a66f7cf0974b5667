"""``wanspec worker``, ``wanspec controller`` and ``wanspec certs``: two real sites."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import signal
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from wanspec.cli.common import SiteThreads, check, check_can_listen
from wanspec.cli.loading import check_model_flags, load_models, timing_from_flags
from wanspec.cli.render import print_generation, workers_table
from wanspec.core.controller import ControllerConfig
from wanspec.core.policy import PolicyName
from wanspec.core.worker import DEFAULT_WORKER_MAX_BATCH, WorkerLimits
from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM
from wanspec.models.defaults import draft_path
from wanspec.protocol.auth import load_key
from wanspec.protocol.codec import DEFAULT_FRAME_TIMEOUT_S
from wanspec.runtime.controller import WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.sampling import SamplingParams
from wanspec.timing.device import PassCost
from wanspec.timing import clock
from wanspec.transport import factory
from wanspec.transport.tls import client_ssl_context, require_file

log = logging.getLogger("wanspec")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # another host name: it may resolve to anything
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def worker_authentication(listen: str, *, auth_key: bytes | None, client_ca: Path | None,
                          insecure: bool) -> str:
    """How the worker at ``listen`` authenticates controllers, in words for its start-up line.

    Refuses (one line naming the fix) to serve a non-loopback address without authentication
    unless ``insecure``: anyone reaching the port would get drafts and see every prompt.
    """
    host, _ = factory.parse_address(listen)
    kinds = [name for name, on in (("pre-shared key", auth_key is not None),
                                   ("mutual TLS", client_ca is not None)) if on]
    if kinds:
        return " + ".join(kinds)
    if is_loopback(host):
        return "none (loopback only)"
    if not insecure:
        raise WanspecError(
            f"refusing to serve {listen} without authentication: anyone who reaches it would get "
            "drafts and see prompts; give --auth-key-file (a pre-shared key) and/or --client-ca "
            "(mutual TLS), or --insecure to serve it anyway")
    log.warning("serving %s without authentication (--insecure): anyone who reaches it gets "
                "drafts and sees prompts", listen)
    return "NONE (--insecure)"


def check_limits(limits: WorkerLimits, frame_timeout: float) -> None:
    """One-line errors for limits that make no sense, before any model loads."""
    for flag, value in (("--max-connections", limits.max_connections),
                        ("--max-sessions", limits.max_sessions),
                        ("--max-connection-sessions", limits.max_connection_sessions),
                        ("--max-prompt", limits.max_prompt),
                        ("--max-lookahead", limits.max_lookahead)):
        check(value >= 1, f"{flag} must be >= 1, got {value}")
    check(limits.max_branches >= 0,
          f"--max-branches must be >= 0 (0: a single chain), got {limits.max_branches}")
    for flag, seconds in (("--hello-timeout", limits.hello_timeout_s),
                          ("--frame-timeout", frame_timeout)):
        check(math.isfinite(seconds) and seconds > 0, f"{flag} must be > 0 seconds, got {seconds}")
    check(math.isfinite(limits.idle_timeout_s) and limits.idle_timeout_s >= 0,
          f"--idle-timeout must be >= 0 seconds (0 = never), got {limits.idle_timeout_s}")


async def follow_sites(site: SiteThreads | None, executors: Sequence[Executor],
                       every_s: float = 2.0) -> None:
    """Keep a long-running site's threads split as other sites on this machine start and stop.

    A site started first took every CPU; when another starts, both must shrink, and the first
    learns of it only here.  torch's thread count is per thread once a thread has run an op, so
    the new count is set in each model's executor thread itself.
    """
    if site is None or site.explicit is not None:
        return
    import torch

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        threads = site.rebalance()
        if threads is not None:
            torch.set_num_threads(threads)
            for executor in executors:
                await loop.run_in_executor(executor, torch.set_num_threads, threads)


def run_worker(*, listen: str, transport: str, draft: Path | None, cert: Path | None,
               key: Path | None, draft_ms: float | None, dtype: str, device: str,
               console: Console, max_batch: int = DEFAULT_WORKER_MAX_BATCH, fit_trees: bool = True,
               limits: WorkerLimits | None = None,
               frame_timeout: float = DEFAULT_FRAME_TIMEOUT_S,
               client_ca: Path | None = None, auth_key_file: Path | None = None,
               insecure: bool = False, metrics_port: int | None = None,
               site: SiteThreads | None = None) -> None:
    limits = limits or WorkerLimits()
    check_limits(limits, frame_timeout)
    check(max_batch >= 1, f"--max-batch must be >= 1, got {max_batch}")
    check(draft_ms is None or (math.isfinite(draft_ms) and draft_ms >= 0),
          f"--draft-ms must be >= 0, got {draft_ms}")
    check_model_flags(dtype, device)
    # every check of the security options comes before the (slow) model load
    auth_key = load_key(auth_key_file)
    if client_ca is not None:
        check(cert is not None and key is not None,
              "--client-ca (mutual TLS) needs TLS: give the worker --cert and --key too")
        require_file(client_ca, "client CA certificate")
    authentication = worker_authentication(listen, auth_key=auth_key, client_ca=client_ca,
                                           insecure=insecure)
    # ---- issue 13: the worker's /metrics and /health ----
    from wanspec.cli.serving import check_metrics_port, start_worker_metrics

    check_metrics_port(metrics_port)
    listen_host, listen_port = factory.parse_address(listen)
    check(metrics_port is None or metrics_port == 0 or metrics_port != listen_port,
          f"--metrics-port {metrics_port} is the --listen port: give the metrics another port")
    # ----
    # a port already taken is found now, not after the model load
    check_can_listen(listen_host, listen_port, "--listen", udp=transport == "quic")
    if metrics_port is not None:
        check_can_listen(listen_host, metrics_port, "--metrics-port")
    if site is not None:
        site.start()  # threads split with other sites on this machine, before the model load
    lm = CausalLM(draft_path(draft), dtype=dtype, device=device, name="draft")
    service = WorkerService(lm, cost=PassCost(draft_ms) if draft_ms is not None else None,
                            limits=limits, max_batch=max_batch, fit_trees=fit_trees,
                            auth_key=auth_key)

    async def main() -> None:
        server = await factory.serve(transport, listen, service.handle, cert=cert, key=key,
                                     client_ca=client_ca, frame_timeout=frame_timeout)
        host, port = server.address
        console.print(f"wanspec worker listening on {transport}://{host}:{port} "
                      f"(draft {lm.path}, tokenizer {service.fingerprint}, "
                      f"up to {max_batch} sequences per draft pass"
                      f"{' while passes stay cheap' if fit_trees else ''}, "
                      f"authentication: {authentication})", soft_wrap=True)
        stop_metrics = (await start_worker_metrics(service, metrics_port, listen_host, console)
                        if metrics_port is not None else None)  # issue 13
        following = asyncio.create_task(follow_sites(site, [lm.executor]))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # pragma: no cover - non-Unix
                pass
        await stop.wait()
        following.cancel()
        if stop_metrics is not None:
            await stop_metrics()
        await server.close()
        console.print("wanspec worker stopped")

    clock.run(main)  # real time, timers on time


def run_controller(*, worker: str | Sequence[str], transport: str, target: Path | None, draft: Path | None,
                   local_draft: bool, prompts: Sequence[str], max_tokens: int, gamma: int,
                   branches: int = ControllerConfig.branches,
                   policy: str, max_slowdown: float, sampling: SamplingParams,
                   stop: Sequence[str], ignore_eos: bool,
                   ca: Path | None, insecure: bool, tls: bool, timeout_s: float,
                   target_ms: float | None, draft_ms: float | None, dtype: str, device: str,
                   as_json: bool, console: Console, exact: bool = False,
                   cert: Path | None = None, key: Path | None = None,
                   auth_key_file: Path | None = None,
                   listen: str | None = None, api_key: str | None = None, grace_s: float = 30.0,
                   model_name: str | None = None, require_worker: bool = False,
                   site: SiteThreads | None = None,
                   service_limits: dict[str, Any] | None = None) -> None:
    """Decode ``prompts`` (printing each result as it finishes) or, with ``listen``, serve the
    API; raises :class:`WorkerRequired` if ``require_worker`` and a prompt had no worker."""
    check(gamma >= 1, f"--gamma must be >= 1, got {gamma}")
    check(branches >= 0, f"--branches must be >= 0, got {branches}")
    check(math.isfinite(timeout_s) and timeout_s > 0,
          f"--timeout must be > 0 seconds, got {timeout_s}")
    check(not (require_worker and listen is not None),
          "--require-worker is for --prompt/--prompts; a service reports a missing worker on "
          "/health and /metrics")
    check(max_tokens >= 1, f"--max-tokens must be >= 1, got {max_tokens}")
    check(max_slowdown >= 1.0, f"--max-slowdown must be >= 1, got {max_slowdown}")
    try:
        pname = PolicyName(policy)
    except ValueError:
        raise WanspecError(f"unknown policy {policy!r}; choose from "
                           f"{', '.join(p.value for p in PolicyName)}") from None
    workers = [worker] if isinstance(worker, str) else list(worker)
    check(len(workers) >= 1, "give at least one --worker HOST:PORT")
    check(len(set(workers)) == len(workers), f"--worker given twice: {', '.join(workers)}")
    for address in workers:
        factory.parse_address(address)  # fail fast on a malformed address
    # the security options too, before the models load: a bad file is the user's error, not a
    # worker that silently goes unused
    auth_key = load_key(auth_key_file)
    check((cert is None) == (key is None),
          "--cert and --key go together: the controller's TLS client certificate and its key")
    if transport == "quic" or tls or ca is not None or insecure or cert is not None:
        client_ssl_context(ca, insecure=insecure, cert=cert, key=key)  # loads every file once
    if listen is not None:  # issue 13: serve the API until stopped
        from wanspec.cli.serving import (check_service_flags, serve_engine,
                                         service_limits_from_flags)

        api_key = check_service_flags(listen=listen, grace_s=grace_s, model_name=model_name,
                                      api_key=api_key)
        limits = service_limits_from_flags(**(service_limits or {}))
        check_can_listen(*factory.parse_address(listen), "--listen")
    timing = timing_from_flags(target_ms, draft_ms)
    check_model_flags(dtype, device)
    if site is not None:
        site.start()  # threads split with other sites on this machine, before the models load
    tgt, drf = load_models(target, draft, need_draft=local_draft, dtype=dtype, device=device,
                           exact=exact)
    if not local_draft:
        drf = None
        pname = PolicyName.REMOTE

    async def main() -> str | None:
        from wanspec.api import ModelPair, remote_engine

        engine = remote_engine(ModelPair(tgt, drf), workers, transport=transport, tls=tls, ca=ca,
                               insecure=insecure, cert=cert, key=key, auth_key=auth_key,
                               timeout_s=timeout_s, policy=pname.value, gamma=gamma,
                               branches=branches,
                               max_slowdown=max_slowdown, timing=timing)
        assert engine.workers is not None
        links = engine.workers.links
        if listen is not None:  # issue 13 (the app closes the worker links when it stops)
            executors = [m.executor for m in (tgt, drf) if m is not None]
            following = asyncio.create_task(follow_sites(site, executors))
            await serve_engine(engine, listen=listen, model_name=model_name or tgt.path.name,
                               api_key=api_key, grace_s=grace_s, console=console,
                               limits=limits)
            following.cancel()
            return None
        try:
            for i, p in enumerate(prompts, 1):
                r = (await engine.agenerate(p, max_tokens=max_tokens, sampling=sampling,
                                            stop_strings=stop, ignore_eos=ignore_eos)).to_dict()
                await _account_worker(r, links)
                if require_worker and r["metrics"]["worker"] is None:
                    return (f"no worker drafted prompt {i} of {len(prompts)} "
                            f"({r['metrics'].get('worker_error') or 'no worker was usable'}); "
                            "--require-worker stops here")
                emit(r)
            workers_state.extend(engine.workers.describe())
        finally:
            await engine.workers.close()
        return None

    def emit(result: dict[str, Any]) -> None:
        """Each prompt's result as soon as it is decoded: a JSON line, or the text and table."""
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            print_generation(result, console)

    workers_state: list[dict[str, Any]] = []
    failure = clock.run(main)  # real time, timers on time
    if failure is not None:
        raise WorkerRequired(failure)
    if listen is None and not as_json and len(workers) > 1:
        console.print(workers_table(workers_state))


class WorkerRequired(WanspecError):
    """``--require-worker``: a prompt was decoded without a worker (exit code 1)."""


async def _account_worker(result: dict[str, Any], links: Sequence[WorkerLink]) -> None:
    """Fill in the worker's own account of the session that drafted ``result`` (its passes and
    wasted passes, the RTT), or why no worker did."""
    m = result["metrics"]
    link = next((k for k in links if k.name == m["worker"]), None)
    if link is None:  # decoded without a worker
        m["draft_passes"]["worker"] = 0
        m["worker_wasted_passes"] = 0
        m["worker_rtt_ms"] = None
        errors = [k.last_error if len(links) == 1 else f"{k.name}: {k.last_error}"
                  for k in links if k.last_error]
        if errors:
            m["worker_error"] = "; ".join(errors)
        return
    rtt = link.rtt or 0.0
    stats = await link.wait_stats([m["request_id"]], timeout=min(2.0, 4 * rtt + 0.5))
    st = stats.get(m["request_id"])
    m["draft_passes"]["worker"] = st.passes if st else 0
    m["worker_wasted_passes"] = st.wasted if st else 0
    m["worker_rtt_ms"] = 1000 * rtt if link.rtt is not None else None
