"""A real transport's host work per message: measured on loopback, charged by the in-process
link to both sites when the host is charged (``emulate --host-transport``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from wanspec.errors import WanspecError
from wanspec.protocol.messages import Commit
from wanspec.timing import clock
from wanspec.transport.inproc import LinkParams, inproc_pair
from wanspec.transport.stack_cost import measure


def test_tcp_costs_the_host_more_than_the_in_process_link():
    cost = measure("tcp", messages=300, repeats=1)
    # system calls and the socket's wake-ups: tens of microseconds a message on a PC
    assert 0.0 < cost.per_side_ms < 5.0
    assert cost.per_side_ms == pytest.approx(cost.per_message_s / 2 * 1e3)


def test_inproc_costs_nothing_and_unknown_transports_are_refused():
    assert measure("inproc").per_message_s == 0.0
    with pytest.raises(WanspecError, match="unknown transport 'udp'"):
        measure("udp")


def _exchange(stack_ms: float, charge_host: bool = True):
    """One commit from the main site to the worker's site: (the worker's time when it got it,
    host seconds charged to each site)."""

    async def receive(end, got):
        await end.recv()
        got["at"] = clock.now()

    async def main():
        controller_end, worker_end = inproc_pair(LinkParams(rtt_ms=10.0, stack_ms=stack_ms))
        got = {}
        task = asyncio.create_task(receive(worker_end, got),
                                   context=clock.site_context("worker"))
        await asyncio.sleep(0)
        await controller_end.send(Commit(1, 0, 0, (5,)))
        await task
        return got["at"], asyncio.get_running_loop().host_by_site

    return clock.run(main, virtual=True, charge_host=charge_host)


def test_the_link_charges_each_end_its_share_of_the_stack():
    at, host = _exchange(stack_ms=200.0)  # far above this machine's own host time
    bare_at, bare_host = _exchange(stack_ms=0.0)
    assert host["main"] >= 0.2 > bare_host["main"]  # the sender's share
    assert host["worker"] >= 0.2 > bare_host["worker"]  # the receiver's
    # the message leaves after the sender's share and is read after the receiver's
    assert 0.005 <= bare_at < 0.2 and at >= 0.005 + 0.4


def test_the_stack_is_not_charged_on_a_plain_virtual_clock():
    at, host = _exchange(stack_ms=200.0, charge_host=False)
    assert at == pytest.approx(0.005) and host == {}


def test_the_in_process_links_delivery_is_left_out_of_its_side(monkeypatch):
    """The emulation charges the link's delivery timers to no site: their CPU must not be
    subtracted from a real stack's (it would charge the stack short)."""
    from wanspec.transport import inproc, stack_cost

    def cpu_per_message() -> float:
        return clock.run(lambda: stack_cost._cpu_per_message("inproc", 100))

    fire = inproc._Pipe._fire

    def slow_fire(self) -> None:  # each delivery burns 1 ms of the loop thread's CPU
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        fire(self)

    plain = cpu_per_message()
    monkeypatch.setattr(inproc._Pipe, "_fire", slow_fire)
    slowed = cpu_per_message()
    assert slowed < plain + 0.0003  # not the 0.5 ms a message the deliveries took
