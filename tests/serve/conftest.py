"""Fixtures of the service tests: the shipped pair, reference outputs (``wanspec generate --mode
target``: LocalEngine, target-only, for the same prompt and sampling), a real TCP worker and the
real server on loopback (see serve_support)."""

from __future__ import annotations

import functools

import pytest
from serve_support import API_KEY, start_service, start_worker, stop_service

from wanspec.models.backend import CausalLM
from wanspec.models.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from wanspec.runtime.engine import LocalEngine
from wanspec.sampling import SamplingParams

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


@pytest.fixture(scope="module")
def worker(shipped):
    w = start_worker(shipped[1])
    yield w
    try:
        w.thread.call(w.server.close())
    finally:
        w.thread.stop()


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
