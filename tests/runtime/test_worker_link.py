"""``WorkerLink``: the asyncio adapter of ``LinkCore`` (handshake, pings, timers)."""

from __future__ import annotations

import asyncio

from remote_support import virtual
from wanspec.runtime.controller import RemoteEngine, WorkerLink
from wanspec.runtime.worker import WorkerService
from wanspec.transport.inproc import LinkParams, inproc_pair


def test_pings_keep_the_rtt_estimate_and_early_timer_wakeups_do_not_livelock(target, near_draft):
    """On a virtual clock asyncio fires timers up to its clock resolution early; the link must
    treat that as the deadline (a livelock of zero-length waits was a real bug)."""
    service = WorkerService(near_draft.sibling("w"))
    calls = []

    async def connect():
        ours, theirs = inproc_pair(LinkParams(rtt_ms=37))
        asyncio.create_task(service.handle(theirs))
        return ours

    async def main():
        link = WorkerLink(connect, RemoteEngine.hello_for(target), ping_interval=0.25)
        on_timer = link.core.on_timer

        def counted(now):
            calls.append(now)
            if len(calls) > 10_000:
                raise AssertionError("timer livelock")
            return on_timer(now)

        link.core.on_timer = counted  # type: ignore[method-assign]
        assert await link.ensure()
        for _ in range(5000):  # other timers in between: virtual time gathers rounding errors
            await asyncio.sleep(0.0041)
        rtt, pings = link.rtt, link.core._ping_seq
        await link.close()
        return rtt, pings

    rtt, pings = virtual(main)
    assert abs(rtt - 0.037) < 1e-6  # every sample is the link's exact RTT on virtual time
    assert 78 <= pings <= 82  # one every 0.25 s for 20.5 s
    assert len(calls) <= pings + 1


def test_send_soon_on_a_connection_is_dropped_once_the_link_has_another(target):
    """A Cancel about a session of one connection must not reach the next one (a worker
    expecting a proof of the key would refuse that connection for it)."""
    from wanspec.protocol.messages import Cancel

    class Recorder:
        def __init__(self) -> None:
            self.sent: list = []

        async def send(self, msg) -> None:
            self.sent.append(msg)

    async def main():
        link = WorkerLink(None, RemoteEngine.hello_for(target))  # type: ignore[arg-type]
        old, new = Recorder(), Recorder()
        link.conn = old  # type: ignore[assignment]
        link.send_soon(Cancel(1, "dropped"), on=old)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        link.send_soon(Cancel(2, "dropped"), on=old)  # type: ignore[arg-type]
        link.conn = new  # type: ignore[assignment]  (reconnected before it ran)
        await asyncio.sleep(0)
        return old.sent, new.sent

    old_sent, new_sent = virtual(main)
    assert old_sent == [Cancel(1, "dropped")] and new_sent == []
