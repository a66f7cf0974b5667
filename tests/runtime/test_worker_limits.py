"""The worker's limits over real loopback sockets: connections, sessions, silence, slow frames,
failing passes, and the state a closed connection leaves behind (none).

Controllers are played by hand (their messages are what a ``RemoteEngine`` sends); timeouts are
injected small so each test takes about a second.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from collections import defaultdict

import pytest

from remote_support import real, virtual
from wanspec.core.worker import WorkerLimits
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Cancel, Commit, Drafts, Error, Hello, Ping, Pong, SessionStart
from wanspec.runtime.worker import WorkerService
from wanspec.timing.device import PassCost
from wanspec.transport import factory
from wanspec.transport.base import ConnectionClosed
from wanspec.transport.certs import create_certs
from wanspec.transport.inproc import LinkParams, inproc_pair

POISON = 13  # a prompt holding this token makes the test's draft model fail


@pytest.fixture(scope="module")
def worker_lm(same_draft):
    lm = same_draft.sibling("limits-worker")
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return create_certs(tmp_path_factory.mktemp("limits-certs"))


def hello_for(service: WorkerService) -> Hello:
    return Hello(PROTOCOL_VERSION, "controller", "test", service.fingerprint,
                 service.draft.vocab_size)


async def serve(service: WorkerService, kind: str = "tcp", certs=None, **kw):
    tls = {"cert": certs.cert, "key": certs.key} if kind == "quic" else {}
    server = await factory.serve(kind, "127.0.0.1:0", service.handle, **tls, **kw)
    host, port = server.address
    return server, f"{host}:{port}"


async def connect(kind: str, address: str, certs=None):
    tls = {"ca": certs.ca_cert} if kind == "quic" else {}
    return await factory.connect(kind, address, timeout=5.0, **tls)


async def recv(conn, timeout: float = 5.0):
    return await asyncio.wait_for(conn.recv(), timeout)


async def until(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def opened(service: WorkerService, kind: str, address: str, certs=None):
    conn = await connect(kind, address, certs)
    await conn.send(hello_for(service))
    assert isinstance(await recv(conn), Hello)
    return conn


# ---- connections ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_connection_cap_refuses_cleanly_and_frees_the_slot(worker_lm, certs, kind):
    async def main():
        service = WorkerService(worker_lm, limits=WorkerLimits(max_connections=1))
        server, address = await serve(service, kind, certs)
        try:
            first = await opened(service, kind, address, certs)
            second = await connect(kind, address, certs)
            await second.send(hello_for(service))
            refusal = await recv(second)
            with pytest.raises(ConnectionClosed):
                await recv(second)
            await second.close()
            await first.close()
            await until(lambda: not service.active)
            third = await opened(service, kind, address, certs)  # the slot is free again
            await third.close()
            return refusal, service
        finally:
            await server.close()

    refusal, service = real(main)
    assert isinstance(refusal, Error) and refusal.rid == -1 and refusal.code == "overloaded"
    assert "limit of 1 connections" in refusal.message
    assert service.connections == 2 and service.refused == 1 and service._refusing == 0


def test_sessions_are_capped_across_connections(worker_lm):
    async def main():
        limits = WorkerLimits(max_sessions=2, max_connection_sessions=2)
        service = WorkerService(worker_lm, limits=limits)
        server, address = await serve(service)
        try:
            a = await opened(service, "tcp", address)
            b = await opened(service, "tcp", address)
            await a.send(SessionStart(1, (1, 2, 3), lookahead=1))
            await a.send(SessionStart(2, (1, 2, 3), lookahead=1))
            got_a = [await recv(a), await recv(a)]  # one draft each
            await b.send(SessionStart(7, (4, 5), lookahead=1))
            refused = await recv(b)
            await a.send(Cancel(1))
            assert (await recv(a)).rid == 1  # its SessionStats
            await until(lambda: service.load.sessions == 1)
            await b.send(SessionStart(8, (4, 5), lookahead=1))
            accepted = await recv(b)
            await a.close()
            await b.close()
            return got_a, refused, accepted
        finally:
            await server.close()

    got_a, refused, accepted = real(main)
    assert all(isinstance(m, Drafts) for m in got_a)
    assert isinstance(refused, Error) and refused.rid == 7 and refused.code == "overloaded"
    assert "limit of 2 sessions" in refused.message
    assert isinstance(accepted, Drafts) and accepted.rid == 8


# ---- silence and slowness ------------------------------------------------------------------------


def test_an_idle_connection_is_closed_and_pings_keep_one_open(worker_lm):
    idle = 0.3

    async def main():
        service = WorkerService(worker_lm, limits=WorkerLimits(idle_timeout_s=idle))
        server, address = await serve(service)
        try:
            quiet = await opened(service, "tcp", address)
            alive = await opened(service, "tcp", address)
            pongs = 0
            for i in range(8):  # 0.8 s: well past the idle timeout
                await alive.send(Ping(float(i), i))
                pongs += isinstance(await recv(alive), Pong)
                await asyncio.sleep(0.1)
            closing = await recv(quiet)
            with pytest.raises(ConnectionClosed):
                await recv(quiet)
            await alive.send(Ping(9.0, 9))
            last = await recv(alive)
            await quiet.close()
            await alive.close()
            return pongs, closing, last
        finally:
            await server.close()

    pongs, closing, last = real(main)
    assert pongs == 8 and isinstance(last, Pong)
    assert isinstance(closing, Error) and closing.code == "idle" and closing.rid == -1


def test_quic_peer_that_never_says_hello_is_dropped(worker_lm, certs):
    async def main():
        service = WorkerService(worker_lm, limits=WorkerLimits(hello_timeout_s=0.3))
        server, address = await serve(service, "quic", certs)
        try:
            conn = await connect("quic", address, certs)  # TLS done; then not a word
            with pytest.raises(ConnectionClosed):
                await recv(conn, 5.0)
            await conn.close()
            await until(lambda: not service.active)
        finally:
            await server.close()

    real(main)


def test_a_trickled_half_frame_is_dropped_and_the_connection_forgotten(worker_lm):
    async def main():
        service = WorkerService(worker_lm)
        server, address = await serve(service, frame_timeout=0.3)
        try:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(struct.pack(">I", 1 << 19) + b"\x92")  # half a MiB announced
            for _ in range(10):
                writer.write(b"\x00")  # a byte every 0.1 s
                await writer.drain()
                await asyncio.sleep(0.1)
                if reader.at_eof():
                    break
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await until(lambda: not service.active)
            return rest, service
        finally:
            await server.close()

    rest, service = real(main)
    assert rest == b"" and service.connections == 1 and not service.active


# ---- failures and what is left behind ------------------------------------------------------------


class FailingPasses:
    """The worker accelerator's queue, failing every pass of a session whose prompt holds
    ``POISON`` (its future fails at once, as a pass failing on the device does).

    The poisoned caches are held weakly, not by ``id()``: a freed cache's id is reused by the
    next one allocated, which would poison a healthy session (it did, depending on test order).
    """

    def __init__(self, enqueue) -> None:
        self.enqueue = enqueue
        self.poisoned: weakref.WeakSet = weakref.WeakSet()

    def __call__(self, kind, cache, run, sampling, source=None, owner=None):
        prompt = run.start == 0  # a session's first pass feeds its prompt (drafts may hold 13 too)
        if (prompt and POISON in run.tokens) or cache in self.poisoned or source in self.poisoned:
            self.poisoned.add(cache)
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(RuntimeError("device lost"))
            return failed
        return self.enqueue(kind, cache, run, sampling, source, owner)


def test_a_failing_draft_pass_ends_its_session_only(worker_lm):
    async def main():
        service = WorkerService(worker_lm)
        service.accelerator.enqueue = FailingPasses(service.accelerator.enqueue)
        server, address = await serve(service)
        try:
            c = await opened(service, "tcp", address)
            await c.send(SessionStart(1, (POISON, 1, 2), lookahead=3))
            await c.send(SessionStart(2, (1, 2, 3), lookahead=3))
            got = defaultdict(list)
            while len(got[2]) < 3 or not got[1]:
                m = await recv(c)
                got[m.rid].append(m)
            (core,) = service.active
            (conn,) = service._open
            state = set(core.sessions), {rid for rid, _ in conn.caches}
            await c.send(Commit(2, 0, 3, tuple(d.tokens[0] for d in got[2])))
            more = await recv(c)
            await c.close()
            await until(lambda: not service.active)
            return got, state, more
        finally:
            await server.close()

    got, state, more = real(main)
    (error,) = got[1]
    assert isinstance(error, Error) and error.code == "session" and "draft pass failed" in error.message
    assert [type(m) for m in got[2]] == [Drafts] * 3  # the other session went on
    assert state == ({2}, {2})  # the failed session is gone, its cache too
    assert isinstance(more, Drafts) and more.rid == 2


def test_closed_connections_leave_nothing_behind(worker_lm):
    async def main():
        service = WorkerService(worker_lm)
        server, address = await serve(service)
        try:
            conns = [await opened(service, "tcp", address) for _ in range(4)]
            for i, c in enumerate(conns):
                await c.send(SessionStart(10 * i + 1, (1, 2, 3), lookahead=2))
                await c.send(SessionStart(10 * i + 2, (4, 5), lookahead=2))
                await c.send(SessionStart(10 * i + 3, (4, 5), temperature=-1.0))  # refused
            for c in conns:
                assert isinstance(await recv(c), (Drafts, Error))
            peak = len(service.active), service.load.sessions
            refused_kept = any(rid % 10 == 3 for core in service.active for rid in core.sessions)
            for c in conns:
                await c.close()
            await until(lambda: not service.active and service.load.sessions == 0)
            await until(lambda: worker_lm.pool.in_use == 0)
            return peak, refused_kept, service
        finally:
            await server.close()

    peak, refused_kept, service = real(main)
    assert peak == (4, 8) and not refused_kept
    assert not service._open and service._refusing == 0 and service.connections == 4
    assert service.totals.sessions == 8


# ---- fairness --------------------------------------------------------------------------------


def test_a_flooding_connection_does_not_starve_another(worker_lm):
    """One connection runs five always-hungry sessions (and floods pings), another one session;
    two sequences per pass: the lone session still gets its share, in every third pass."""
    pass_s = 0.010

    async def main():
        service = WorkerService(worker_lm, cost=PassCost(pass_s * 1000), max_batch=2)
        ends = []
        for _ in range(2):
            ours, theirs = inproc_pair(LinkParams())
            task = asyncio.create_task(service.handle(theirs))
            await ours.send(hello_for(service))
            assert isinstance(await ours.recv(), Hello)
            ends.append((ours, task))
        (flood, _), (lone, _) = ends
        arrivals: dict[int, list[float]] = defaultdict(list)

        async def pump(conn) -> None:  # commit every draft at once: the sessions never rest
            loop = asyncio.get_running_loop()
            try:
                while True:
                    m = await conn.recv()
                    if isinstance(m, Drafts):
                        arrivals[m.rid].append(loop.time())
                        await conn.send(Commit(m.rid, m.epoch, m.base, m.tokens))
            except ConnectionClosed:
                pass

        pumps = [asyncio.create_task(pump(c)) for c, _ in ends]
        for rid in range(1, 6):
            await flood.send(SessionStart(rid, (rid, 2, 3), lookahead=4))
        await lone.send(SessionStart(99, (7, 8), lookahead=4))
        for i in range(200):  # and a flood of pings besides
            await flood.send(Ping(float(i), i))
        await asyncio.sleep(0.3)
        for c, task in ends:
            await c.close()
            await task
        for p in pumps:
            p.cancel()
        return arrivals

    arrivals = virtual(main)
    counts = {rid: len(ts) for rid, ts in arrivals.items()}
    share = sum(counts.values()) / 6
    assert counts[99] >= share - 2, counts  # the lone session gets a full share
    gaps = [b - a for a, b in zip(arrivals[99], arrivals[99][1:])]
    assert max(gaps) <= 3 * pass_s + 1e-6  # in every third pass: never starved


def test_many_refused_connections_are_one_warning(worker_lm, caplog):
    """A peer (or many) hitting the connection limit cannot flood the worker's log."""
    import logging

    async def main():
        service = WorkerService(worker_lm, limits=WorkerLimits(max_connections=1))
        server, address = await serve(service, "tcp", None)
        try:
            first = await opened(service, "tcp", address, None)
            for _ in range(20):
                extra = await connect("tcp", address, None)
                await extra.send(hello_for(service))
                await recv(extra)  # the refusal
                await extra.close()
            await first.close()
        finally:
            await server.close()

    with caplog.at_level(logging.INFO, logger="wanspec.worker"):
        real(main)
    notices = [r for r in caplog.records if "limit of 1 connections" in r.getMessage()]
    assert len(notices) >= 20
    assert sum(r.levelno >= logging.WARNING for r in notices) == 1
