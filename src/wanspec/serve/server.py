"""Running an ASGI app on uvicorn until stopped, in the caller's event loop.

uvicorn's own signal handling re-raises the signal once it has shut down (so a SIGTERM'd
process would die of it, not exit 0), and only works in the main thread.  :class:`Server` turns
it off; :func:`serve_until_stopped` installs SIGINT/SIGTERM handlers that ask for a graceful
stop: stop accepting, let in-flight requests finish for up to ``grace_s`` seconds, then cancel
the rest (each cancellation frees its batch slot and worker session), then run the app's
shutdown (which closes the worker links).  A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any, Callable, Iterator

import uvicorn

from wanspec.errors import WanspecError

log = logging.getLogger("wanspec.serve")


class Server(uvicorn.Server):
    """uvicorn without its signal capture (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_stop(self) -> None:
        """Graceful the first time, immediate the second."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); a bad address is the user's error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WanspecError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise WanspecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_server(app: Any, *, grace_s: float, log_level: str = "warning") -> Server:
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace_s,
                            access_log=False, lifespan="on")
    return Server(config)


async def serve_until_stopped(server: Server, sock: socket.socket,
                              on_started: Callable[[str, int], None] | None = None,
                              signals: bool = True) -> None:
    """Serve on ``sock`` until SIGINT/SIGTERM (or ``server.request_stop()``)."""
    loop = asyncio.get_running_loop()
    installed = []
    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, server.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix, thread
                pass
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started and on_started is not None:
            host, port = sock.getsockname()[:2]
            on_started(host, port)
        await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if not server.started:
        raise WanspecError("the HTTP server did not start (see the log above)")
