"""``wanspec controller --listen`` and ``wanspec worker --metrics-port``: the sites as services.

The controller serves the OpenAI-compatible API (:mod:`wanspec.serve`) until SIGINT/SIGTERM,
then stops accepting, lets in-flight requests finish for ``--grace`` seconds (cancelling the
rest), closes its worker sessions and exits 0.  The worker serves ``/metrics`` and ``/health``
beside its drafting port.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from rich.console import Console

from wanspec.cli.common import check
from wanspec.errors import WanspecError
from wanspec.transport import factory

API_KEY_ENV = "WANSPEC_API_KEY"


def check_service_flags(*, listen: str, grace_s: float, model_name: str | None,
                        api_key: str | None) -> str | None:
    """Refuse bad service flags before any model loads; returns the API key in force
    (``--api-key``, else ``$WANSPEC_API_KEY``, else none)."""
    factory.parse_address(listen)
    check(grace_s >= 0, f"--grace must be >= 0 seconds, got {grace_s}")
    check(model_name is None or model_name.strip() != "", "--served-model-name must not be empty")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    check(key is None or key.strip() != "", "--api-key must not be empty")
    return key


def service_limits_from_flags(*, max_request_bytes: int | None = None,
                              max_prompts_per_request: int = 64,
                              max_queued_requests: int = 256) -> Any:
    """The service's caps from ``--max-request-bytes``, ``--max-prompts-per-request`` and
    ``--max-queued-requests``, refused (before any model loads) unless positive."""
    from wanspec.serve.app import ServiceLimits

    check(max_request_bytes is None or max_request_bytes >= 1024,
          f"--max-request-bytes must be >= 1024, got {max_request_bytes}")
    check(max_prompts_per_request >= 1,
          f"--max-prompts-per-request must be >= 1, got {max_prompts_per_request}")
    check(max_queued_requests >= 1,
          f"--max-queued-requests must be >= 1, got {max_queued_requests}")
    return ServiceLimits(max_request_bytes=max_request_bytes,
                         max_prompts_per_request=max_prompts_per_request,
                         max_queued_requests=max_queued_requests)


def check_metrics_port(port: int | None) -> None:
    check(port is None or 0 <= port <= 65535, f"--metrics-port must be 0-65535, got {port}")


async def serve_engine(engine: Any, *, listen: str, model_name: str, api_key: str | None,
                       grace_s: float, console: Console, limits: Any = None) -> None:
    """Serve ``engine`` on ``listen`` until stopped (the app closes the worker links)."""
    from wanspec.serve.app import create_app
    from wanspec.serve.server import bind, make_server, serve_until_stopped

    host, port = factory.parse_address(listen)
    sock = bind(host, port)
    extra = {"service_limits": limits} if limits is not None else {}
    server = make_server(create_app(engine, model_name=model_name, api_key=api_key, **extra),
                         grace_s=grace_s)

    def started(h: str, p: int) -> None:
        auth = "API key required on /v1/*" if api_key else "no API key"
        console.print(f"wanspec controller serving {model_name!r} on http://{h}:{p} "
                      f"(OpenAI-compatible /v1/completions, /v1/chat/completions; /metrics; "
                      f"{auth}); Ctrl-C or SIGTERM stops", soft_wrap=True)

    await serve_until_stopped(server, sock, started)
    console.print("wanspec controller stopped")


async def start_worker_metrics(service: Any, port: int, host: str,
                               console: Console) -> Callable[[], Any]:
    """Serve the worker's ``/metrics`` and ``/health`` on ``host:port``; returns the stopper."""
    import asyncio

    from wanspec.serve.server import bind, make_server, serve_until_stopped
    from wanspec.serve.worker_http import create_worker_app

    sock = bind(host, port)
    server = make_server(create_worker_app(service), grace_s=1.0)
    ready = asyncio.Event()

    def started(h: str, p: int) -> None:
        console.print(f"worker metrics on http://{h}:{p}/metrics (health: /health)",
                      soft_wrap=True)
        ready.set()

    task = asyncio.create_task(serve_until_stopped(server, sock, started, signals=False))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # (raises why it did not start)
        raise WanspecError("the worker's metrics server stopped at once")

    async def stop() -> None:
        server.request_stop()
        await task

    return stop
