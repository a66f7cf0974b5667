"""The worker side of faults: controllers that misbehave never take the worker down.

A peer that skips Hello, has another tokenizer, sends bad sessions or garbage, goes silent or
disappears is refused or dropped; the worker frees what it held and keeps serving others.
"""

from __future__ import annotations

import asyncio

from remote_support import PROMPT, real, tcp_engine

from wanspec.protocol.messages import Hello
from wanspec.runtime.controller import RemoteEngine
from wanspec.runtime.worker import WorkerService
from wanspec.transport import factory
from wanspec.transport.inproc import LinkParams, inproc_pair

# ---- the worker side: peers that misbehave ----------------------------------------------------


def _served(service: WorkerService):
    """A controller-side connection to ``service.handle`` over an instant in-process link."""
    ours, theirs = inproc_pair(LinkParams())
    task = asyncio.create_task(service.handle(theirs))
    return ours, task


def test_worker_refuses_a_peer_that_does_not_start_with_hello(same_draft):
    from wanspec.protocol.messages import Error, SessionStart

    async def main():
        service = WorkerService(same_draft.sibling("w"))
        conn, task = _served(service)
        await conn.send(SessionStart(1, (1, 2, 3)))
        reply = await asyncio.wait_for(conn.recv(), 5)
        await asyncio.wait_for(task, 5)
        return reply, service

    reply, service = real(main)
    assert isinstance(reply, Error) and reply.code == "handshake" and "Hello" in reply.message
    assert service.totals.sessions == 0 and not service.active


def test_worker_refuses_a_controller_with_another_tokenizer(target, other_tok_draft):
    from wanspec.protocol.messages import Error

    async def main():
        service = WorkerService(other_tok_draft.sibling("w"))
        conn, task = _served(service)
        await conn.send(RemoteEngine.hello_for(target))
        reply = await asyncio.wait_for(conn.recv(), 5)
        await asyncio.wait_for(task, 5)
        return reply

    reply = real(main)
    assert isinstance(reply, Error) and "tokenizer mismatch" in reply.message


def test_worker_refuses_bad_sessions_but_keeps_serving(target, same_draft):
    from wanspec.protocol.messages import (
        Cancel,
        Commit,
        Drafts,
        Error,
        Ping,
        Pong,
        SessionStart,
    )

    async def main():
        service = WorkerService(same_draft.sibling("w"))
        conn, task = _served(service)
        await conn.send(RemoteEngine.hello_for(target))
        hello = await conn.recv()
        recv = lambda: asyncio.wait_for(conn.recv(), 10)  # noqa: E731
        await conn.send(SessionStart(1, (1, 2, 3), temperature=-1.0))
        bad_params = await recv()
        await conn.send(SessionStart(2, (1, 2, 3), lookahead=2))
        drafts = [await recv(), await recv()]
        await conn.send(Commit(2, 0, 9, (1,)))  # not contiguous: the session is dropped
        bad_commit = await recv()
        await conn.send(Ping(1.5, 7))
        pong = await recv()
        await conn.send(Cancel(2))  # already dropped: ignored
        await conn.close()
        await asyncio.wait_for(task, 5)
        return hello, bad_params, drafts, bad_commit, pong, service

    hello, bad_params, drafts, bad_commit, pong, service = real(main)
    assert isinstance(hello, Hello) and hello.role == "worker"
    assert isinstance(bad_params, Error) and bad_params.rid == 1 and bad_params.code == "session"
    assert "temperature" in bad_params.message
    assert [type(d) for d in drafts] == [Drafts, Drafts]
    assert [(d.rid, d.epoch, d.base) for d in drafts] == [(2, 0, 3), (2, 0, 4)]
    assert isinstance(bad_commit, Error) and bad_commit.rid == 2 and "expected 3" in bad_commit.message
    assert isinstance(pong, Pong) and (pong.t, pong.seq) == (1.5, 7)
    assert 0.0 <= pong.busy <= 1.0 and pong.demand == 0.0  # its load: no session left
    assert not service.active and service.totals.sessions == 1


def test_worker_releases_sessions_when_the_controller_goes_away(target, same_draft):
    from wanspec.protocol.messages import SessionStart

    async def main():
        service = WorkerService(same_draft.sibling("w"))
        conn, task = _served(service)
        await conn.send(RemoteEngine.hello_for(target))
        await conn.recv()
        await conn.send(SessionStart(1, (1, 2, 3), lookahead=4))
        await conn.send(SessionStart(2, (4, 5), lookahead=4))
        await asyncio.wait_for(conn.recv(), 10)  # drafting has begun
        await conn.close()
        await asyncio.wait_for(task, 10)
        return service

    service = real(main)
    assert service.totals.sessions == 2 and not service.active  # the connection's core is gone


def test_worker_handles_a_silent_peer_without_raising(same_draft):
    from wanspec.core.worker import WorkerLimits

    async def main():
        service = WorkerService(same_draft.sibling("w"), limits=WorkerLimits(hello_timeout_s=0.2))
        conn, task = _served(service)
        try:
            await asyncio.wait_for(task, 5)  # raises if handle() raised
        finally:
            await conn.close()

    real(main)


def test_worker_survives_garbage_and_serves_the_next_controller(target, same_draft, ref_measured):
    async def main():
        service = WorkerService(same_draft.sibling("tcp-worker"))
        server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        host, port = server.address
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: worker\r\n\r\n")
            await writer.drain()
            # the worker drops us (oversize 'frame'): EOF, bounded
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            link, engine = tcp_engine(target, None, f"{host}:{port}")
            try:
                r = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)
            finally:
                await link.close()
            return rest, r
        finally:
            await server.close()

    rest, r = real(main)
    assert rest == b""
    assert r.token_ids == ref_measured.token_ids
    assert r.metrics["worker_used"] is True and r.metrics["worker_lost"] is None
