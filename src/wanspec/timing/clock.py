"""Real or virtual time for the asyncio event loop.

Everything in wanspec reads time from ``loop.time()`` and waits with ``asyncio.sleep``, so the
clock is injected by choosing the loop.  :class:`VirtualTimeLoop` makes the loop's clock virtual:
when nothing is ready to run it jumps straight to the next timer instead of sleeping.  Work that
really executes off-loop (a model forward in a thread) holds the clock with :func:`hold`, so
virtual time stands still while it runs; an emulated device then charges its configured cost on
the virtual clock.  Result: emulated runs are deterministic and take only the real compute time.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
from typing import Any, Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and advances only when idle.

    "Idle" means: no callback ready, no I/O event pending and no :func:`hold` active.  Then the
    selector's timeout (the delay to the next timer) is added to the virtual clock instead of
    being slept.  Real sockets still work (they are polled without blocking), but their timing
    is not meaningful on virtual time; use the in-process transport for virtual-time runs.
    """

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        self._holds = 0
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

    def time(self) -> float:
        return self._virtual_now

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


def run(main: Callable[[], Awaitable[T]], *, virtual: bool = False) -> T:
    """Run ``main()`` on a fresh loop, with virtual time if asked."""
    factory = VirtualTimeLoop if virtual else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]
