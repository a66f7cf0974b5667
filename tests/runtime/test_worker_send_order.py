"""The worker's messages reach the wire in the order its core decided them, even while the
socket pushes back.

A send writes its frame, then waits for the socket to drain.  While one pass's messages wait
there, the connection's receive loop (a commit: another pass decided) and the next pass's
results must not write first: a lane's later draft would arrive before its earlier one (stale
at the controller), or a branch before its parent's draft at the fork (a TreeError: the honest
worker dropped).  Found by review; the adapter's writes now go one caller at a time.
"""
from __future__ import annotations

import asyncio

from remote_support import virtual
from wanspec.protocol.codec import PROTOCOL_VERSION
from wanspec.protocol.messages import Commit, Drafts, Hello, SessionStart
from wanspec.runtime.worker import WorkerService
from wanspec.timing.device import PassCost
from wanspec.transport.base import Connection
from wanspec.transport.inproc import LinkParams, inproc_pair


class TcpLike(Connection):
    """Writes the frame at once (as TcpConnection.send: write, then drain); drain blocks while
    ``paused`` (the peer reads slowly)."""

    def __init__(self, inner):
        self.inner, self.peer = inner, "tcp-like"
        self.paused = False
        self.resumed = asyncio.Event()
        self.wire: list = []

    async def send(self, msg):
        self.wire.append(msg)
        await self.inner.send(msg)          # the write
        while self.paused:                  # the drain
            self.resumed.clear()
            await self.resumed.wait()

    async def recv(self):
        return await self.inner.recv()

    async def close(self):
        await self.inner.close()

    @property
    def closed(self):
        return self.inner.closed


def test_a_commit_handled_while_a_send_waits_does_not_overtake_it(near_draft):
    lm = near_draft.sibling("send-order")

    async def main():
        svc = WorkerService(lm, cost=PassCost(10.0), max_batch=8)
        ctl, w = inproc_pair(LinkParams())
        tcp = TcpLike(w)
        handler = asyncio.create_task(svc.handle(tcp))
        await ctl.send(Hello(PROTOCOL_VERSION, "controller", "t", svc.fingerprint, lm.vocab_size))
        assert isinstance(await ctl.recv(), Hello)
        got = {1: [], 2: []}

        async def reader():
            while True:
                m = await ctl.recv()
                if isinstance(m, Drafts):
                    got[m.rid].append(m)
        rt = asyncio.create_task(reader())
        p1, p2 = (5, 17, 33), (120, 7, 7)
        await ctl.send(SessionStart(1, p1, lookahead=3))
        await ctl.send(SessionStart(2, p2, lookahead=3))
        while len(got[1]) < 3 or len(got[2]) < 3:
            await asyncio.sleep(0.001)
        # the peer now reads slowly: drains block
        tcp.paused = True
        await ctl.send(Commit(1, 0, 3, (got[1][0].tokens[0],)))
        await ctl.send(Commit(2, 0, 3, (got[2][0].tokens[0],)))
        await asyncio.sleep(0.05)   # one batched pass for both; its _deliver blocks on rid 1
        await ctl.send(Commit(2, 0, 4, (got[2][1].tokens[0],)))   # receive loop -> new pass
        await asyncio.sleep(0.05)
        tcp.paused = False
        tcp.resumed.set()
        await asyncio.sleep(0.05)
        rt.cancel()
        await ctl.close()
        await handler
        return [(m.rid, m.base) for m in tcp.wire if isinstance(m, Drafts)][6:]

    order = virtual(main)
    lm.close()
    assert len(order) >= 3 and {r for r, _ in order} == {1, 2}
    bases2 = [b for r, b in order if r == 2]
    assert bases2 == sorted(bases2), f"session 2's drafts out of order: {bases2}"


def test_a_pass_drafts_leave_with_the_next_pass_already_on_the_device(near_draft):
    """The next pass goes to the device before a pass's drafts are encoded and sent, so the
    sending overlaps it (before: every send came first, the device idle meanwhile)."""
    lm = near_draft.sibling("passes-first")

    async def main():
        svc = WorkerService(lm, cost=PassCost(4.0), max_batch=8)
        ctl, w = inproc_pair(LinkParams())
        tcp = TcpLike(w)
        running_at_send: list[bool] = []
        send = tcp.send

        async def recording_send(msg):
            if isinstance(msg, Drafts):
                running_at_send.append(svc.accelerator.running)
            await send(msg)

        tcp.send = recording_send
        handler = asyncio.create_task(svc.handle(tcp))
        await ctl.send(Hello(PROTOCOL_VERSION, "controller", "t", svc.fingerprint, lm.vocab_size))
        assert isinstance(await ctl.recv(), Hello)
        await ctl.send(SessionStart(1, (5, 17, 33), lookahead=8))
        drafts = []
        while len(drafts) < 8:
            m = await ctl.recv()
            if isinstance(m, Drafts):
                drafts.append(m)
        await ctl.close()
        await handler
        return drafts, running_at_send

    drafts, running = virtual(main)
    lm.close()
    assert [m.base for m in drafts] == list(range(3, 11))  # (one lane, in order)
    # every pass but the last (its lane had reached the lookahead: no next pass) had the next
    # one on the device as its drafts left
    assert running[:7] == [True] * 7, running
