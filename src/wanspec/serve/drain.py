"""How many API requests are in flight, the cap on them, and the graceful stop.

uvicorn closes its listener the moment a stop begins and, at the end of its graceful timeout,
cancels the requests left (a plain-text 500, a stream cut without ``[DONE]``, tracebacks).  So
the stop happens here first, with the listener still open: new generation requests and
``/health`` are answered 503 "stopping", in-flight requests get ``grace_s`` seconds to finish,
then the rest end with an OpenAI error body (503; a stream gets an error chunk and ``[DONE]``).
Only then does uvicorn shut down, with nothing left to cancel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from wanspec.serve.errors import APIError

log = logging.getLogger("wanspec.serve")

ABORT_WAIT_S = 5.0  # how long aborted requests may take to send their error bodies
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")


class Abortable(Protocol):
    def abort(self, error: BaseException) -> None: ...


class Drain:
    """The requests in flight (generation POSTs), the cap on them, and the stop's state."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.stopping = False
        self.aborted: APIError | None = None  # set once the grace period is over
        self.generations: set[Abortable] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def refusal(self) -> APIError | None:
        """Why a new request is refused now (stopping, or too many in flight), else None."""
        if self.stopping:
            return APIError("the server is stopping and accepts no new requests; retry on "
                            "another replica or after it restarts.", status=503)
        if self.in_flight >= self.max_in_flight:
            return APIError(f"the server is overloaded: {self.in_flight} requests are in flight "
                            f"(--max-queued-requests {self.max_in_flight}); retry later.",
                            status=503)
        return None

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def stop(self, grace_s: float) -> None:
        """Refuse new requests, let those in flight finish for ``grace_s``, abort the rest."""
        self.stopping = True
        if self.in_flight:
            log.info("stopping: %d request(s) in flight, %g s to finish", self.in_flight,
                     grace_s)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return
        except asyncio.TimeoutError:
            pass
        self.aborted = APIError(f"the server is stopping: this request did not finish within "
                                f"its grace period ({grace_s:g} s) and was cancelled.",
                                status=503)
        log.warning("stopping: cancelling %d request(s) still in flight after %g s",
                    self.in_flight, grace_s)
        for gen in list(self.generations):
            gen.abort(self.aborted)
        try:
            await asyncio.wait_for(self._idle.wait(), ABORT_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("stopping: %d request(s) did not end; uvicorn cancels them",
                        self.in_flight)


class DrainGate:
    """Counts generation requests in flight; refuses them (503, OpenAI error body) when
    stopping or when ``max_in_flight`` are already in flight -- before reading their bodies."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS \
                or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        refused = self.drain.refusal()
        if refused is not None:
            headers: dict[str, Any] = {"Retry-After": "1"} if not self.drain.stopping else {}
            await JSONResponse(refused.body(), status_code=refused.status,
                               headers=headers)(scope, receive, send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()
