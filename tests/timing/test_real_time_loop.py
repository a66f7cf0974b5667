"""The real-time loop's selector: timed waits without epoll's millisecond rounding, and every
event still delivered (timing itself is measured by benchmarks/timer_precision.py, not here)."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
import time

import pytest

from wanspec.timing import clock

pytestmark = pytest.mark.skipif(selectors.DefaultSelector is not selectors.EpollSelector,
                                reason="the precise selector replaces epoll only")


def test_real_time_runs_use_the_precise_selector():
    async def main() -> object:
        loop = asyncio.get_running_loop()
        return loop._selector  # type: ignore[attr-defined]

    assert isinstance(clock.run(main), clock.PreciseEpollSelector)
    assert not isinstance(clock.run(main, virtual=True), clock.PreciseEpollSelector)


@pytest.mark.parametrize("fd_limit", [clock._SELECT_FD_LIMIT, 0])  # 0: the plain epoll path
def test_a_timed_wait_returns_the_events_that_arrive_during_it(monkeypatch, fd_limit):
    monkeypatch.setattr(clock, "_SELECT_FD_LIMIT", fd_limit)
    a, b = socket.socketpair()
    sel = clock.PreciseEpollSelector()
    try:
        sel.register(a, selectors.EVENT_READ, "a")
        assert sel.select(0.002) == []  # nothing: the whole timeout, no events
        threading.Timer(0.01, b.send, args=(b"x",)).start()
        t0 = time.monotonic()
        ready = sel.select(30.0)
        assert time.monotonic() - t0 < 25.0  # woken by the event, not the timeout
        assert [(key.data, events) for key, events in ready] == [("a", selectors.EVENT_READ)]
        assert [key.data for key, _ in sel.select(0)] == ["a"]  # level-triggered, still there
        assert [key.data for key, _ in sel.select(None)] == ["a"]
    finally:
        sel.close()
        a.close()
        b.close()


def test_sleeps_and_sockets_work_on_the_real_time_loop():
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        early = []
        for delay in (0.0003, 0.0017, 0.004):
            t0 = loop.time()
            await asyncio.sleep(delay)
            early.append(loop.time() - t0 - delay)
        reader, writer = await asyncio.open_connection(*server_address)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"pong\n"
        writer.close()
        return early

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(16) == b"ping\n"
            conn.sendall(b"pong\n")

    listener = socket.create_server(("127.0.0.1", 0))
    server_address = listener.getsockname()
    thread = threading.Thread(target=serve, args=(listener,), daemon=True)
    thread.start()
    try:
        assert min(clock.run(main)) >= 0.0
    finally:
        thread.join(10)
        listener.close()
