"""What a real transport's stack costs the host per message, beyond the in-process link.

Why: ``emulate --host-overhead measured`` charges each site the Python it really runs, but its
sites talk over the in-process link, which has no transport stack: no socket system calls, and
for QUIC none of aioquic's packets, TLS records, acknowledgements and congestion control.  A real
controller spent 9-15 ms of CPU a token over QUIC against 7-11 over TCP (docs/results.md §10),
and the emulation could not see it.  So the cost is measured here, on this machine, the only way
that includes all of it: the same small message exchange run over a real loopback connection of
the transport and over the in-process link, each on its own real-time loop, comparing the loop
thread's CPU per message.  The in-process link's own delivery timers are left out of its side:
the emulation charges them to no site, so subtracting them would charge the stack short.  The link then charges half of the difference to the sending site and
half to the receiving one (``LinkParams.stack_ms``; the split is an approximation: on TCP the
receiver's wake-up costs about what the sender's write does, on QUIC both ends encrypt or
decrypt and acknowledge).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from wanspec.errors import WanspecError
from wanspec.protocol.messages import Commit, Drafts
from wanspec.timing import clock
from wanspec.transport.base import Connection

TRANSPORTS = ("inproc", "tcp", "quic")
# the exchange measured: what one accepted token costs on the wire, about -- a commit up, drafts
# back (sizes of the shipped pair's messages; a bundle of lanes is longer but no more messages)
_UP = Commit(rid=1, epoch=3, base=120, tokens=(4021, 17, 880))
_DOWN = Drafts(rid=1, epoch=3, base=123, tokens=(311, 5012, 77, 9, 1404, 62))
_WARM_UP = 100
_DEADLINE_S = 30.0


@dataclass(frozen=True)
class StackCost:
    """Host seconds a message costs a real ``transport`` beyond the in-process link, both ends
    together (0 for ``inproc`` itself)."""

    transport: str
    per_message_s: float

    @property
    def per_side_ms(self) -> float:
        """What each end is charged a message, in milliseconds (``LinkParams.stack_ms``)."""
        return self.per_message_s / 2 * 1e3


def measure(transport: str, messages: int = 500, repeats: int = 3) -> StackCost:
    """Measure ``transport``'s stack on this machine: ``repeats`` times ``messages`` exchanges
    over loopback and as many over the in-process link, alternating, the median difference
    (about a second for QUIC).  Call with no loop running."""
    if transport not in TRANSPORTS:
        raise WanspecError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}")
    if transport == "inproc":
        return StackCost("inproc", 0.0)
    differences = []
    for _ in range(repeats):
        real = clock.run(lambda: _cpu_per_message(transport, messages))
        link = clock.run(lambda: _cpu_per_message("inproc", messages))
        differences.append(real - link)
    return StackCost(transport, max(statistics.median(differences), 0.0))


async def _cpu_per_message(transport: str, messages: int) -> float:
    """The loop thread's CPU per message over ``transport``, both ends in this loop."""

    async def answer(conn: Connection) -> None:
        try:
            while True:
                await conn.recv()
                await conn.send(_DOWN)
        except Exception:  # the measuring end closed
            return
        finally:
            await conn.close()

    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        client = await _pair(transport, tmp, answer, stack)
        delivering = _delivery_cpu(client) if transport == "inproc" else [0.0]
        async with asyncio.timeout(_DEADLINE_S):  # a broken loopback fails, never hangs
            for _ in range(_WARM_UP):
                await client.send(_UP)
                await client.recv()
            t0, delivered0 = time.thread_time(), delivering[0]
            for _ in range(messages):
                await client.send(_UP)
                await client.recv()
            spent = time.thread_time() - t0 - (delivering[0] - delivered0)
            return spent / (2 * messages)


def _delivery_cpu(client: Connection) -> list[float]:
    """Time the in-process link's delivery timers (both directions) from now on: a one-element
    list holding their CPU seconds so far."""
    from wanspec.transport.inproc import InprocConnection

    assert isinstance(client, InprocConnection)
    total = [0.0]
    for pipe in (client._out, client._in):
        fire = pipe._fire

        def timed(fire=fire) -> None:
            t0 = time.thread_time()
            try:
                fire()
            finally:
                total[0] += time.thread_time() - t0

        pipe._fire = timed  # type: ignore[method-assign]
    return total


async def _pair(transport: str, tmp: Path, answer: Callable[[Connection], Awaitable[None]],
                stack: contextlib.AsyncExitStack) -> Connection:
    """The measuring end of a ``transport`` connection to ``answer``; ``stack`` closes it all."""
    if transport == "inproc":
        from wanspec.transport.inproc import inproc_pair

        client, far = inproc_pair()
        task = asyncio.create_task(answer(far))
        stack.callback(task.cancel)
        stack.push_async_callback(client.close)
        return client
    from wanspec.transport import factory

    tls: dict[str, Path] = {}
    ca: dict[str, Path] = {}
    if transport == "quic":
        from wanspec.transport.certs import create_certs

        certs = create_certs(tmp)
        tls, ca = {"cert": certs.cert, "key": certs.key}, {"ca": certs.ca_cert}
    server = await factory.serve(transport, "127.0.0.1:0", answer, **tls)
    stack.push_async_callback(server.close)
    host, port = server.address
    client = await factory.connect(transport, f"{host}:{port}", timeout=10.0, **ca)
    stack.push_async_callback(client.close)
    return client
