"""Worker faults: death mid-request, refusal at the handshake, unreachable or wrong-protocol peers.

Whatever happens to the worker, the request completes and its output is identical to
target-only decoding.  Everything is bounded by timeouts; sockets only on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from helpers import free_tcp_port
from remote_support import (
    MAX_TOKENS,
    POLICIES,
    PROMPT,
    SAMPLED,
    TIMING,
    config,
    real,
    tcp_engine,
    virtual,
)

from wanspec.errors import IncompatibleModelsError
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Hello
from wanspec.core.controller import ControllerConfig
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.inproc import InprocDeployment
from wanspec.runtime.worker import WorkerService
from wanspec.sampling import SamplingParams
from wanspec.timing import clock
from wanspec.transport import factory
from wanspec.transport.inproc import LinkParams, inproc_pair

# ---- the worker dies mid-request ----------------------------------------------------------------


@pytest.mark.parametrize("local_draft", [True, False], ids=["local-sd", "target-only"])
@pytest.mark.parametrize("policy", POLICIES)
def test_worker_killed_after_first_tokens(policy, local_draft, target, near_draft, ref_greedy,
                                          ref_sampled):
    sampling = SAMPLED if local_draft else SamplingParams()
    ref = ref_sampled if local_draft else ref_greedy

    async def main():
        async with InprocDeployment(target, near_draft, link=LinkParams(rtt_ms=60, jitter_ms=5),
                                    timing=TIMING, config=config(policy),
                                    local_draft=local_draft) as dep:
            seen: list[int] = []

            def on_tokens(tokens):
                seen.extend(tokens)
                if len(seen) >= 6 and dep.worker_alive:
                    dep.kill_worker()

            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, sampling=sampling,
                                   ignore_eos=True, on_tokens=on_tokens)
            # the next request finds no worker at all and runs alone
            r2 = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, sampling=sampling,
                                    ignore_eos=True)
            return r, r2, seen

    r, r2, seen = virtual(main)
    assert seen == r.token_ids == ref.token_ids
    assert r.metrics["worker_used"] is True
    assert r.metrics["worker_lost"]  # the reason, e.g. "connection closed by the worker"
    assert r2.token_ids == ref.token_ids
    assert r2.metrics["worker_used"] is False
    if not local_draft:
        assert r.metrics["draft_passes"]["controller"] == 0
        assert r2.metrics["draft_passes"]["controller"] == 0
        assert r2.metrics["target_passes"] == MAX_TOKENS  # target-only fallback
    elif policy == "remote":
        # after the loss, remote-with-local-draft falls back to local SD: local drafts appear
        assert r2.metrics["draft_passes"]["controller"] > 0


@pytest.mark.parametrize("kill_after_s", [0.0, 0.05, 0.25, 0.6])
def test_worker_killed_by_a_timer(kill_after_s, target, random_draft, ref_greedy):
    async def main():
        async with InprocDeployment(target, random_draft, link=LinkParams(rtt_ms=100),
                                    timing=TIMING, config=config("entropy")) as dep:
            async def killer():
                await asyncio.sleep(kill_after_s)
                dep.kill_worker()

            k = asyncio.create_task(killer())
            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            await k
            return r

    r = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["wall_s"] > kill_after_s  # the kill happened while the request ran
    if kill_after_s < 0.1:
        # killed before the handshake (one RTT) completed: refused, or lost mid-request
        assert not r.metrics["worker_used"] or r.metrics["worker_lost"]
    else:
        assert r.metrics["worker_used"] and r.metrics["worker_lost"]


def test_worker_refusing_the_session_falls_back(target, same_draft, ref_greedy):
    """A worker that refuses SessionStart (here: at its session limit) is dropped for the request."""
    from wanspec.core.worker import WorkerLimits

    async def main():
        async with InprocDeployment(target, same_draft, link=LinkParams(rtt_ms=40),
                                    timing=TIMING, config=config("entropy")) as dep:
            dep.service.limits = WorkerLimits(max_sessions=0)  # every session is refused
            return await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)

    r = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    assert "refused" in r.metrics["worker_lost"]


# ---- the worker is not compatible -------------------------------------------------------------


def test_worker_with_a_different_tokenizer_is_refused(target, other_tok_draft, ref_greedy):
    async def main():
        async with InprocDeployment(target, other_tok_draft, link=LinkParams(rtt_ms=40),
                                    timing=TIMING, config=config("remote"),
                                    local_draft=False) as dep:
            r = await dep.generate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            return r, dep.link.last_error, dep.worker_device.stats.passes

    r, error, worker_passes = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["worker_used"] is False
    assert r.metrics["worker_lost"] is None
    assert worker_passes == 0
    assert error and "tokenizer" in error


def _fake_worker_link(hello_reply: Hello | None, target) -> tuple[WorkerLink, list]:
    """A link whose 'worker' answers the handshake with ``hello_reply`` (or never answers)."""
    tasks: list = []

    async def fake_worker(conn):
        await conn.recv()  # the controller's Hello
        if hello_reply is not None:
            await conn.send(hello_reply)
        await asyncio.sleep(3600)  # then say nothing more

    async def connector():
        ours, theirs = inproc_pair(LinkParams(rtt_ms=20))
        tasks.append(asyncio.create_task(fake_worker(theirs)))
        return ours

    link = WorkerLink(connector, RemoteEngine.hello_for(target), hello_timeout=1.0)
    return link, tasks


@pytest.mark.parametrize("reply", [
    Hello(PROTOCOL_VERSION, "worker", model="x", tokenizer="0123456789abcdef", vocab_size=300),
    Hello(PROTOCOL_VERSION + 1, "worker", model="x"),
    None,  # silent peer: handshake timeout
], ids=["tokenizer", "version", "silent"])
def test_controller_refuses_an_incompatible_worker_at_handshake(reply, target, ref_greedy):
    async def main():
        link, tasks = _fake_worker_link(reply, target)
        engine = RemoteEngine(target, link, timing=TIMING, config=config("remote"))
        try:
            r = await engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            return r, link.last_error
        finally:
            await link.close()
            for t in tasks:
                t.cancel()

    r, error = virtual(main)
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["worker_used"] is False
    expected = {"tokenizer": "tokenizer mismatch", "version": "version mismatch",
                "silent": "handshake in time"}
    key = "silent" if reply is None else ("version" if reply.version != PROTOCOL_VERSION
                                          else "tokenizer")
    assert expected[key] in error


def test_local_draft_with_a_different_tokenizer_is_refused(target, other_tok_draft):
    with pytest.raises(IncompatibleModelsError):
        RemoteEngine(target, None, local_draft=other_tok_draft)


def test_no_worker_at_all(target, same_draft, ref_greedy):
    engine = RemoteEngine(target, None, local_draft=same_draft, timing=TIMING)
    r = clock.run(lambda: engine.agenerate(PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True),
                  virtual=True)
    assert r.token_ids == ref_greedy.token_ids
    assert r.metrics["worker_used"] is False and r.metrics["draft_passes"]["controller"] > 0


# ---- real TCP sockets on 127.0.0.1 --------------------------------------------------------------


@pytest.mark.parametrize("local", [True, False], ids=["local-sd", "target-only"])
def test_unreachable_worker_over_tcp(local, target, same_draft, ref_measured):
    port = free_tcp_port()

    async def main():
        link, engine = tcp_engine(target, same_draft if local else None, f"127.0.0.1:{port}")
        try:
            r1 = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)
            r2 = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)  # in backoff
            return r1, r2, link.last_error
        finally:
            await link.close()

    r1, r2, error = real(main)
    for r in (r1, r2):
        assert r.token_ids == ref_measured.token_ids
        assert r.metrics["worker_used"] is False
    assert "refused" in error or "cannot reach" in error


@pytest.mark.parametrize("behaviour", ["http-then-close", "http-keep-open", "silent"])
def test_wrong_protocol_peer_over_tcp(behaviour, target, same_draft, ref_measured):
    async def http_peer(reader, writer):
        try:
            if behaviour != "silent":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.read(100), 1.0)
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n"
                             b"Connection: close\r\n\r\nBad Request")
                await writer.drain()
            if behaviour == "http-then-close":
                return
            await asyncio.sleep(30)
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(http_peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link, engine = tcp_engine(target, same_draft, f"127.0.0.1:{port}", hello_timeout=1.0)
        try:
            r = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)
            return r, link.last_error
        finally:
            await link.close()
            server.close()

    r, error = real(main)
    assert r.token_ids == ref_measured.token_ids
    assert r.metrics["worker_used"] is False
    assert error
    if behaviour == "silent":
        assert "handshake" in error
    else:
        assert "protocol" in error or "wanspec" in error or "closed" in error


def test_real_tcp_worker_stopped_mid_request(target, near_draft, ref_measured):
    """A real WorkerService behind a TCP server that shuts down after the first tokens."""

    async def main():
        service = WorkerService(near_draft.sibling("tcp-worker"))
        server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        host, port = server.address
        link, engine = tcp_engine(target, near_draft, f"{host}:{port}")
        stopping: list[asyncio.Task] = []

        def on_tokens(tokens):
            if not stopping:
                stopping.append(asyncio.get_running_loop().create_task(server.close()))

        try:
            r = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True,
                                       on_tokens=on_tokens)
            await asyncio.gather(*stopping)
            return r
        finally:
            await link.close()
            await server.close()

    r = real(main)
    assert r.token_ids == ref_measured.token_ids
    assert r.metrics["worker_used"] is True
    # the worker may have been lost mid-request or the request may have finished first on a
    # fast machine; either way the output is the target's
    assert r.metrics["worker_lost"] is None or isinstance(r.metrics["worker_lost"], str)


def test_real_tcp_worker_serves_a_request(target, same_draft, ref_measured):
    async def main():
        service = WorkerService(same_draft.sibling("tcp-worker"))
        server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        host, port = server.address
        link, engine = tcp_engine(target, None, f"{host}:{port}")
        try:
            r = await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True)
            stats = await link.wait_stats([r.metrics["request_id"]], timeout=5.0)
            return r, stats, service.device.stats.sequences
        finally:
            await link.close()
            await server.close()

    r, stats, sequences = real(main)
    assert r.token_ids == ref_measured.token_ids
    assert r.metrics["worker_used"] is True and r.metrics["worker_lost"] is None
    assert sequences > 0
    (st,) = stats.values()
    # the session's passes are its lanes' (a draft tree's lanes may share a device pass): the
    # sequences the device carried, the session being alone on it -- except the passes still in
    # flight when the Cancel came (at most one per lane), which its account no longer counts
    assert st.passes <= sequences <= st.passes + ControllerConfig().branches + 1


def test_controller_reconnects_after_the_worker_restarts(target, same_draft, ref_measured):
    async def main():
        service = WorkerService(same_draft.sibling("tcp-worker"))
        server = await factory.serve("tcp", "127.0.0.1:0", service.handle)
        host, port = server.address

        async def connector():
            return await factory.connect("tcp", f"{host}:{port}", timeout=2.0)

        link = WorkerLink(connector, RemoteEngine.hello_for(target), hello_timeout=5.0,
                          backoff=(0.1, 0.2))
        engine = RemoteEngine(target, link, config=config("remote"))
        results = []
        try:
            results.append(await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True))
            await server.close()  # the worker goes down between requests
            await asyncio.sleep(0.3)
            results.append(await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True))
            server = await factory.serve("tcp", f"{host}:{port}", service.handle)  # back up
            await asyncio.sleep(0.5)  # past the backoff
            results.append(await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True))
        finally:
            await link.close()
            await server.close()
        return results

    first, down, again = real(main)
    for r in (first, down, again):
        assert r.token_ids == ref_measured.token_ids
    assert first.metrics["worker_used"] is True
    assert down.metrics["worker_used"] is False
    assert again.metrics["worker_used"] is True and again.metrics["worker_lost"] is None


def test_unreachable_worker_over_quic(target, same_draft, ref_measured):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        async def connector():
            return await factory.connect("quic", f"127.0.0.1:{port}", insecure=True, timeout=1.0)

        link = WorkerLink(connector, RemoteEngine.hello_for(target), hello_timeout=1.0)
        engine = RemoteEngine(target, link, local_draft=same_draft, config=config("always"))
        try:
            return await engine.agenerate(PROMPT, max_tokens=16, ignore_eos=True), link.last_error
        finally:
            await link.close()

    r, error = real(main)
    assert r.token_ids == ref_measured.token_ids
    assert r.metrics["worker_used"] is False and error
