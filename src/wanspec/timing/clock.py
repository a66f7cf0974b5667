"""Real or virtual time for the asyncio event loop.

Everything in wanspec reads time from ``loop.time()`` and waits with ``asyncio.sleep``, so the
clock is injected by choosing the loop.  :class:`VirtualTimeLoop` makes the loop's clock virtual:
when nothing is ready to run it jumps straight to the next timer instead of sleeping.  Work that
really executes off-loop (a model forward in a thread) runs through :func:`off_loop`, so
virtual time stands still while it runs; an emulated device then charges its configured cost on
the virtual clock.  Result: emulated runs are deterministic and take only the real compute time.

A real deployment also pays for its host work: the event loop's own Python (protocol, policies,
bookkeeping) and model passes that take longer than their emulated cost.  With
``charge_host=True`` the virtual clock charges both, measured as the run goes (``wanspec emulate
--host-overhead measured``): each callback's real time is charged to the *site* that ran it,
and a pass occupies its device for the larger of its emulated cost and its real compute (what
``--target-ms`` means for a real site: a floor on real time).  Runs then vary with the machine,
as real ones do.

Sites.  The two sites of an in-process deployment share one loop, but as real processes on two
machines each has its own host: the worker's Python must not delay the busy site's.  So every
site keeps its own host timeline (:class:`_HostTimelines`).  A callback runs in the context of
the task it resumes, and :data:`SITE` in that context names the site (``site_context`` tags the
tasks a site starts; whatever ``main`` starts is the ``"main"`` site).  A site's callback that
runs at virtual time ``t`` and takes ``h`` seconds of real time makes that site busy until
``t + h``: its later callbacks wait until then (in their order), while other sites' callbacks
still run at ``t``; inside a callback ``time()`` is ``t`` plus the work done so far.  Callbacks
of no site (a model thread reporting its result, a link delivering a message) are neither
charged nor held back: they stand for work no host does.

On real time, :func:`real_time_loop` is the loop every wanspec process runs on: asyncio's own
waits for its next timer through epoll, whose timeout is whole milliseconds rounded up, so every
``asyncio.sleep`` and ``call_at`` there wakes 0.6 ms late on average (up to 1 ms) -- 15% of an
emulated 4 ms draft pass, and on each direction of a delay proxy's round trip.  Its selector
waits for the timer with microsecond resolution instead.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import select
import selectors
import time
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


SITE: contextvars.ContextVar[str | None] = contextvars.ContextVar("wanspec_site", default=None)
MAIN_SITE = "main"  # the site of whatever :func:`run`'s ``main`` starts


def site_context(name: str) -> contextvars.Context:
    """A copy of the current context whose callbacks are site ``name``'s host work: pass it to
    ``asyncio.create_task(..., context=...)`` for the task a site starts (its own tasks inherit
    it).  Only a loop charging the host reads it."""
    ctx = contextvars.copy_context()
    ctx.run(SITE.set, name)
    return ctx


def no_site_context() -> contextvars.Context:
    """A context of no site: a callback run in it is charged to no host and waits for none (a
    link delivering a message: the wire, not a host, does that work)."""
    return contextvars.Context()


class _HostTimelines(collections.deque):  # type: ignore[type-arg]
    """The ready queue of a :class:`VirtualTimeLoop` charging the host, one timeline per site.

    asyncio's ``_run_once`` takes each ready callback with ``popleft()`` and runs it unless it
    is cancelled, so the queue sees every callback start, and the next ``popleft()`` (or
    :meth:`settle`, after the iteration) sees it end.  A callback whose site is still busy at
    the current virtual time, or has a line waiting, is held back: it joins its site's waiting
    line (kept in order) and the loop is handed a cancelled stand-in instead.  A timer at the
    site's free time releases the line's *head* alone; when the head has run, the next release
    is armed at the site's new free time.  So a site's callbacks run in the order they became
    ready (one released at the very time another of the site's timers fires still goes first),
    and each waits once, however long its line.
    """

    def __init__(self, loop: "VirtualTimeLoop") -> None:
        super().__init__()
        self._loop = loop
        self.free_at: dict[str, float] = {}  # virtual time each site's host is next free
        self.spent: dict[str, float] = {}  # host seconds charged to each site so far
        self._waiting: dict[str, collections.deque[asyncio.Handle]] = {}
        # sites whose line is being released: a timer armed, or its head back in the ready queue
        self._releasing: set[str] = set()
        self._released: dict[str, asyncio.Handle] = {}  # each such site's head, not run yet
        self._running: tuple[str, float] | None = None  # the site running now, since when
        self._charged = 0.0  # host seconds the running callback declared beyond its real time
        self._skip = asyncio.Handle(lambda: None, (), loop)
        self._skip.cancel()

    def popleft(self) -> asyncio.Handle:
        self.settle()
        handle: asyncio.Handle = super().popleft()
        site = handle._context.get(SITE)  # type: ignore[attr-defined]
        if site is None:
            return handle
        if self._released.get(site) is handle:  # its line's head, released: its turn
            del self._released[site]
            if handle.cancelled():
                self._release(site)
                return handle
        elif handle.cancelled():
            return handle
        elif site in self._releasing or self.free_at.get(site, 0.0) > self._loop._virtual_now:
            self._wait(site, handle)
            return self._skip
        self._running = (site, time.perf_counter())
        return handle

    def elapsed(self) -> float:
        """Real time the callback running now has taken so far (0 between callbacks)."""
        if self._running is None:
            return 0.0
        return time.perf_counter() - self._running[1] + self._charged

    def charge(self, seconds: float) -> None:
        """Charge the running callback's site ``seconds`` more than its real time (work this
        process does not do but a real site would); nothing between callbacks or for no site."""
        if seconds < 0:
            raise ValueError(f"host work cannot be negative, got {seconds}")
        if self._running is not None:
            self._charged += seconds

    def settle(self) -> None:
        """Charge the callback that just ran to its site."""
        if self._running is None:
            return
        spent = self.elapsed()
        site = self._running[0]
        self._running = None
        self._charged = 0.0
        self.free_at[site] = self._loop._virtual_now + spent
        self.spent[site] = self.spent.get(site, 0.0) + spent
        if site in self._releasing:  # a released head has run: release the next when free
            self._arm(site)

    def _wait(self, site: str, handle: asyncio.Handle) -> None:
        self._waiting.setdefault(site, collections.deque()).append(handle)
        if site not in self._releasing:
            self._releasing.add(site)
            self._arm(site)

    def _arm(self, site: str) -> None:
        """Release the line's head at the site's free time (the line's end: nothing to do)."""
        if self._waiting.get(site):
            self._loop.call_at(self.free_at[site], self._release, site, context=no_site_context())
        else:
            self._waiting.pop(site, None)
            self._releasing.discard(site)

    def _release(self, site: str) -> None:
        """Put the line's first live callback back in the ready queue (cancelled ones are
        dropped); its run arms the next release (:meth:`settle`)."""
        line = self._waiting.get(site)
        while line and line[0].cancelled():
            line.popleft()
        if not line:
            self._arm(site)
            return
        head = line.popleft()
        self._released[site] = head
        self.append(head)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and advances only when idle.

    "Idle" means: no callback ready, no I/O event pending and no :func:`off_loop` work running.
    Then the selector's timeout (the delay to the next timer) is added to the virtual clock
    instead of being slept.  Real sockets still work (they are polled without blocking), but
    their timing is not meaningful on virtual time; use the in-process transport for
    virtual-time runs.
    With ``charge_host`` each site's callbacks take their real time on that site's timeline
    (see the module).
    """

    def __init__(self, charge_host: bool = False) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        self._holds = 0
        self._timelines: _HostTimelines | None = None
        if charge_host:
            self._timelines = _HostTimelines(self)
            self._ready = self._timelines  # type: ignore[assignment]
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is not None and timeout <= 0:
                return real_select(0)
            if self._holds > 0:
                # off-loop work in flight: wait for it for real, with the clock frozen
                return real_select(None if timeout is None else max(timeout, 0.05))
            ready = real_select(0)
            if ready:
                return ready
            if timeout is None:
                return real_select(None)
            self._virtual_now += timeout
            return []

        self._selector.select = select  # type: ignore[attr-defined,method-assign]

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any,
                             context: contextvars.Context | None = None) -> asyncio.Handle:
        """Another thread's callback (a model pass handing back its result) is no site's host
        work, whatever context that thread happens to run in."""
        return super().call_soon_threadsafe(
            callback, *args, context=no_site_context() if context is None else context)

    def _run_once(self) -> None:
        try:
            super()._run_once()  # type: ignore[misc]
        finally:
            if self._timelines is not None:
                self._timelines.settle()  # the iteration's last callback

    @property
    def charge_host(self) -> bool:
        """Whether host work is charged (the loop then keeps a timeline per site)."""
        return self._timelines is not None

    @property
    def host_s(self) -> float:
        """Host time charged so far, all sites together (``charge_host``)."""
        return sum(self.host_by_site.values())

    @property
    def host_by_site(self) -> dict[str, float]:
        """Host time charged so far to each site (``charge_host``)."""
        return dict(self._timelines.spent) if self._timelines is not None else {}

    def time(self) -> float:
        if self._timelines is None:
            return self._virtual_now
        return self._virtual_now + self._timelines.elapsed()

    def hold(self) -> None:
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1


async def off_loop(executor: concurrent.futures.Executor, fn: Callable[[], T]) -> T:
    """Run ``fn`` on ``executor``, freezing virtual time while it runs (on a real-time loop:
    just run it).  The clock is released as soon as the loop has ``fn``'s result (the next
    turn of the loop after it returns), not when the awaiting task resumes: with the host
    charged, that task's site may still be busy, and its resuming is then a later point on the
    clock, which must be free to move."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(executor, fn)
    if isinstance(loop, VirtualTimeLoop):
        loop.hold()
        future.add_done_callback(lambda _: loop.release(), context=no_site_context())
    return await future


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


def charge_host(seconds: float) -> None:
    """Charge the site whose callback is running ``seconds`` of host work it did not do here
    (a real transport's stack, which the in-process link has none of); a no-op unless the loop
    charges the host."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, VirtualTimeLoop) and loop._timelines is not None:
        loop._timelines.charge(seconds)


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
    host work measured as it runs, ``main``'s own to :data:`MAIN_SITE`; virtual time only),
    else :func:`real_time_loop`."""
    factory = (lambda: VirtualTimeLoop(charge_host)) if virtual else real_time_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main(), context=site_context(MAIN_SITE))  # type: ignore[arg-type]
