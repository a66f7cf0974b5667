"""A worker at its limits refuses with Error(code="overloaded"): the controller decodes locally at
once, with the target-only output, over a real TCP connection."""

from __future__ import annotations

import asyncio

import pytest

from remote_support import PROMPT, real, tcp_engine
from wanspec.core.worker import WorkerLimits
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Drafts, Hello, SessionStart
from wanspec.runtime.worker import WorkerService
from wanspec.transport import factory


@pytest.fixture(scope="module")
def worker_lm(same_draft):
    lm = same_draft.sibling("overloaded-worker")
    yield lm
    lm.close()


async def occupy(service: WorkerService, address: str, sessions: int):
    """Another controller's connection, holding ``sessions`` sessions."""
    conn = await factory.connect("tcp", address, timeout=5.0)
    await conn.send(Hello(PROTOCOL_VERSION, "controller", "other", service.fingerprint,
                          service.draft.vocab_size))
    assert isinstance(await asyncio.wait_for(conn.recv(), 5), Hello)
    for rid in range(1, sessions + 1):
        await conn.send(SessionStart(rid, (1, 2, 3), lookahead=1))
        assert isinstance(await asyncio.wait_for(conn.recv(), 5), Drafts)
    return conn


@pytest.mark.parametrize("limits, held, why", [
    (WorkerLimits(max_connections=1), 0, "limit of 1 connections"),  # refused at the handshake
    (WorkerLimits(max_sessions=1), 1, "limit of 1 sessions"),  # refused at SessionStart
], ids=["connections", "sessions"])
def test_an_overloaded_worker_makes_the_request_decode_locally_at_once(
        target, worker_lm, ref_measured, limits, held, why):
    async def main():
        service = WorkerService(worker_lm, limits=limits)
        server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        host, port = server.address
        try:
            other = await occupy(service, f"{host}:{port}", held)
            link, engine = tcp_engine(target, None, f"{host}:{port}")
            try:
                r = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)
            finally:
                await link.close()
            await other.close()
            return r, link
        finally:
            await server.close()

    r, link = real(main)
    assert r.token_ids == ref_measured.token_ids  # target-only output
    if held == 0:  # refused at the connection: the request never used the worker
        assert not r.metrics["worker_used"] and why in link.last_error
        assert "refused the connection" in link.last_error
    else:  # refused at the session: dropped for this request, named as overload
        assert r.metrics["worker_used"] and "overloaded" in r.metrics["worker_lost"]
        assert why in r.metrics["worker_lost"]
    assert r.metrics["remote_drafts_received"] == 0
    assert r.metrics["wall_s"] < 5.0  # at once: no waiting for drafts that cannot come
