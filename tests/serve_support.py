"""The controller service on loopback for tests/serve: an event loop in a thread, a real TCP
worker in another, the HTTP server on a random port (shared by tests/serve/conftest.py and its
tests; a module of its own so that no test imports a conftest)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Callable

from wanspec.models.backend import CausalLM

API_KEY = "test-key"
MODEL = "wanspec-test"


class LoopThread:
    """An asyncio loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@dataclass
class Worker:
    address: str
    service: Any
    thread: LoopThread
    server: Any

    def kill(self) -> None:
        """The worker site dies: its listener and every connection close."""
        async def close():
            await self.server.close()
            for c in list(self.service._open):
                await c.conn.close()
        self.thread.call(close())


def start_worker(draft: CausalLM) -> Worker:
    from wanspec.runtime.worker import WorkerService
    from wanspec.transport import factory

    service = WorkerService(draft.sibling("worker-draft"))
    thread = LoopThread("test-worker")
    server = thread.call(factory.serve("tcp", "127.0.0.1:0", service.handle))
    host, port = server.address
    return Worker(f"{host}:{port}", service, thread, server)


@dataclass
class Service:
    url: str
    engine: Any
    thread: LoopThread
    server: Any
    done: Any  # the serving coroutine's future

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Read the engine's state from its own loop."""
        async def read():
            return fn()
        return self.thread.call(read())


def start_service(shipped, addresses: list[str], *, api_key: str | None = API_KEY,
                  local_draft: bool = True, grace_s: float = 5.0,
                  limits: Any = None) -> Service:
    from wanspec.runtime.controller import RemoteEngine, WorkerLink
    from wanspec.serve.app import create_app
    from wanspec.serve.server import bind, make_server, serve_until_stopped
    from wanspec.transport import factory

    target, draft = shipped
    thread = LoopThread("test-controller")

    def connector(address):
        async def connect():
            return await factory.connect("tcp", address, timeout=2.0)
        return connect

    async def build():
        hello = RemoteEngine.hello_for(target)
        links = [WorkerLink(connector(a), hello, hello_timeout=3.0, name=a,
                            backoff=(0.2, 1.0)) for a in addresses]
        engine = RemoteEngine(target, links,
                              local_draft=draft.sibling("local-draft") if local_draft else None)
        extra = {"service_limits": limits} if limits is not None else {}
        app = create_app(engine, model_name=MODEL, api_key=api_key, **extra)
        return engine, make_server(app, grace_s=grace_s)

    engine, server = thread.call(build())
    sock = bind("127.0.0.1", 0)
    started = threading.Event()
    box: dict = {}

    def on_started(host, port):
        box["url"] = f"http://{host}:{port}"
        started.set()

    done = asyncio.run_coroutine_threadsafe(
        serve_until_stopped(server, sock, on_started, signals=False), thread.loop)
    assert started.wait(30), "the server did not start"
    return Service(box["url"], engine, thread, server, done)


def stop_service(svc: Service) -> None:
    """A graceful stop, as on SIGTERM: in-flight requests finish, the worker links close."""
    svc.server.request_stop()
    try:
        svc.done.result(30)
    finally:
        svc.thread.stop()
