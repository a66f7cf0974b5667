"""A real controller service on loopback: the shipped pair, a real TCP worker in a thread, the
HTTP server in another thread (its own event loop), a random port.

Reference outputs are ``wanspec generate --mode target`` (LocalEngine, target-only) for the same
prompt and sampling.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams

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


@pytest.fixture(scope="session")
def shipped():
    """The shipped target and draft (loaded once; each site gets its own executor)."""
    target = CausalLM(DEFAULT_TARGET, name="target")
    draft = CausalLM(DEFAULT_DRAFT, name="draft")
    yield target, draft
    target.close()
    draft.close()


@pytest.fixture(scope="session")
def reference(shipped):
    """``reference(prompt, max_tokens, sampling, stop, ignore_eos)``: target-only decoding,
    exactly what ``wanspec generate --mode target`` prints (cached)."""
    target, _ = shipped
    engine = LocalEngine(target)

    @functools.lru_cache(maxsize=None)
    def ref(prompt: str | tuple[int, ...], max_tokens: int, sampling: SamplingParams = SamplingParams(),
            stop: tuple[str, ...] = (), ignore_eos: bool = False):
        p = prompt if isinstance(prompt, str) else list(prompt)
        return engine.generate(p, mode="target", max_tokens=max_tokens, sampling=sampling,
                               stop_strings=stop, ignore_eos=ignore_eos)

    return ref


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


@pytest.fixture(scope="module")
def worker(shipped):
    w = start_worker(shipped[1])
    yield w
    try:
        w.thread.call(w.server.close())
    finally:
        w.thread.stop()


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
                  local_draft: bool = True) -> Service:
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
        app = create_app(engine, model_name=MODEL, api_key=api_key)
        return engine, make_server(app, grace_s=5.0)

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


@pytest.fixture(scope="module")
def service(shipped, worker):
    svc = start_service(shipped, [worker.address])
    yield svc
    stop_service(svc)


@pytest.fixture(scope="module")
def client(service):
    import openai

    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0,
                         timeout=60)
