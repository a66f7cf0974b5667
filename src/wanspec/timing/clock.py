"""Real or virtual time for the asyncio event loop.

Everything in wanspec reads time from ``loop.time()`` and waits with ``asyncio.sleep``, so the
clock is injected by choosing the loop.  :class:`VirtualTimeLoop` makes the loop's clock virtual:
when nothing is ready to run it jumps straight to the next timer instead of sleeping.  Work that
really executes off-loop (a model forward in a thread) holds the clock with :func:`hold`, so
virtual time stands still while it runs; an emulated device then charges its configured cost on
the virtual clock.  Result: emulated runs are deterministic and take only the real compute time.

A real deployment also pays for its host work: the event loop's own Python (protocol, policies,
bookkeeping) and model passes that take longer than their emulated cost.  With
``charge_host=True`` the virtual clock charges both, measured as the run goes (``wanspec emulate
--host-overhead measured``): the real time each loop iteration spends running callbacks is added
to the clock, and a pass occupies its device for the larger of its emulated cost and its real
compute (what ``--target-ms`` means for a real site: a floor on real time).  Runs then vary
with the machine, as real ones do.  Both sites of an in-process deployment share the one loop,
so their host work is charged to one clock: an upper bound when the sites run on different
machines, about right when they share one.

On real time, :func:`real_time_loop` is the loop every wanspec process runs on: asyncio's own
waits for its next timer through epoll, whose timeout is whole milliseconds rounded up, so every
``asyncio.sleep`` and ``call_at`` there wakes 0.6 ms late on average (up to 1 ms) -- 15% of an
emulated 4 ms draft pass, and on each direction of a delay proxy's round trip.  Its selector
waits for the timer with microsecond resolution instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import selectors
import time
from typing import Any, Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and advances only when idle.

    "Idle" means: no callback ready, no I/O event pending and no :func:`hold` active.  Then the
    selector's timeout (the delay to the next timer) is added to the virtual clock instead of
    being slept.  Real sockets still work (they are polled without blocking), but their timing
    is not meaningful on virtual time; use the in-process transport for virtual-time runs.
    """

    def __init__(self, charge_host: bool = False) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        self._holds = 0
        self.charge_host = charge_host
        self.host_s = 0.0  # host time charged so far (charge_host)
        self._select_s = 0.0  # real time the current iteration spent in select
        self._iteration_t0: float | None = None  # when the current iteration began (charging)
        real_select = self._selector.select  # type: ignore[attr-defined]

        def timed_select(timeout: float | None) -> list[Any]:
            t0 = time.perf_counter()
            try:
                return real_select(timeout)
            finally:
                self._select_s += time.perf_counter() - t0

        def select(timeout: float | None = None) -> list[Any]:
            poll = timed_select if self.charge_host else real_select
            if timeout is not None and timeout <= 0:
                return poll(0)
            if self._holds > 0:
                # off-loop work in flight: wait for it for real, with the clock frozen
                return poll(None if timeout is None else max(timeout, 0.05))
            ready = poll(0)
            if ready:
                return ready
            if timeout is None:
                return poll(None)
            self._virtual_now += timeout
            return []

        self._selector.select = select  # type: ignore[attr-defined,method-assign]

    def _run_once(self) -> None:
        """One iteration; with ``charge_host``, its callbacks' real time moves the clock on
        (as they run: ``time()`` inside a callback includes the work done so far)."""
        if not self.charge_host:
            return super()._run_once()  # type: ignore[misc,no-any-return]
        self._select_s = 0.0
        self._iteration_t0 = time.perf_counter()
        try:
            super()._run_once()  # type: ignore[misc]
        finally:
            spent = self._host_spent()
            self._iteration_t0 = None
            self._virtual_now += spent
            self.host_s += spent
        return None

    def _host_spent(self) -> float:
        """Real time this iteration has spent outside select (its callbacks' host work)."""
        if self._iteration_t0 is None:
            return 0.0
        return max(time.perf_counter() - self._iteration_t0 - self._select_s, 0.0)

    def time(self) -> float:
        return self._virtual_now + self._host_spent()

    def hold(self) -> None:
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1


@contextlib.contextmanager
def hold() -> Iterator[None]:
    """Freeze virtual time while off-loop work runs (no-op on a real-time loop)."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeLoop):
        loop.hold()
        try:
            yield
        finally:
            loop.release()
    else:
        yield


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleep_until(deadline: float) -> None:
    delay = deadline - now()
    if delay > 0:
        await asyncio.sleep(delay)


def is_virtual() -> bool:
    return isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


def charges_host() -> bool:
    """Whether the running loop's virtual clock charges measured host work (see the module)."""
    loop = asyncio.get_running_loop()
    return isinstance(loop, VirtualTimeLoop) and loop.charge_host


_SELECT_FD_LIMIT = 1024  # select() takes descriptors below FD_SETSIZE only


class PreciseEpollSelector(selectors.EpollSelector):
    """epoll, with a timed wait accurate to microseconds rather than rounded up to the next
    millisecond: the wait itself is a ``select()`` on the epoll descriptor (readable when any
    registered one has events), whose timeout has microsecond resolution; the events are then
    read with a zero-timeout epoll.  An untimed wait, or an epoll descriptor select() cannot
    take, is plain epoll."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0 and self.fileno() < _SELECT_FD_LIMIT:
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


def real_time_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for real time whose timers fire on time (see the module docstring).
    Where epoll is not the default selector (kqueue: nanosecond timeouts) the default loop."""
    if selectors.DefaultSelector is selectors.EpollSelector:
        return asyncio.SelectorEventLoop(PreciseEpollSelector())
    return asyncio.new_event_loop()


def host_counts() -> bool:
    """Whether host work takes time on the running loop's clock: real time, or a virtual clock
    charging the host.  Then an emulated pass cost is a floor on the pass's real compute rather
    than exactly what it takes, and each turn of the loop costs."""
    loop = asyncio.get_running_loop()
    return not isinstance(loop, VirtualTimeLoop) or loop.charge_host


def run(main: Callable[[], Awaitable[T]], *, virtual: bool = False,
        charge_host: bool = False) -> T:
    """Run ``main()`` on a fresh loop: virtual time if asked (``charge_host``: charging the
    host work measured as it runs; virtual time only), else :func:`real_time_loop`."""
    factory = (lambda: VirtualTimeLoop(charge_host)) if virtual else real_time_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]
