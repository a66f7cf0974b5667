"""Running an ASGI app on uvicorn until stopped, in the caller's event loop.

uvicorn's own signal handling re-raises the signal once it has shut down (so a SIGTERM'd
process would die of it, not exit 0), and only works in the main thread.  :class:`Server` turns
it off; :func:`serve_until_stopped` installs SIGINT/SIGTERM handlers that ask for a graceful
stop.  An app with a :class:`~wanspec.serve.drain.Drain` (``app.state.drain``, the controller's)
drains first, listener still open: new requests get 503, in-flight ones have ``grace_s``
seconds, then end with an OpenAI error body (each cancellation frees its batch slot and worker
session); only then does uvicorn stop accepting and run the app's shutdown (which closes the
worker links).  Other apps get uvicorn's own graceful stop.  A second signal stops at once.
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
from wanspec.serve.drain import Drain

log = logging.getLogger("wanspec.serve")


AFTER_DRAIN_S = 5.0  # uvicorn's own graceful timeout once the app has drained


class Server(uvicorn.Server):
    """uvicorn without its signal capture, draining the app first (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain | None = None,
                 grace_s: float = 0.0) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def request_stop(self) -> None:
        """Graceful the first time, immediate the second (callable from any thread)."""
        if self._loop is None or self.drain is None:
            self._stop()
        else:
            self._loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        if self.should_exit or self._draining is not None:
            self.force_exit = True
            self.should_exit = True
        elif self.drain is None:
            self.should_exit = True
        else:
            self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        assert self.drain is not None
        try:
            await self.drain.stop(self.grace_s)
        finally:
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
    drain = getattr(getattr(app, "state", None), "drain", None)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=AFTER_DRAIN_S if drain else grace_s)
    return Server(config, drain, grace_s)


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
