"""The controller's HTTP API: an ASGI app (FastAPI) over a :class:`RemoteEngine`.

Wire-compatible with vLLM's OpenAI server: ``POST /v1/completions``, ``POST
/v1/chat/completions`` (JSON or SSE), ``GET /v1/models``, ``/health``, ``/version``,
``/metrics``.  Every refused request is a 400 (401, 404) with the OpenAI error body, never a
500; ``X-Request-Id`` is echoed or made; with an API key, ``/v1/*`` needs ``Authorization:
Bearer KEY``.  A client that goes away cancels its request at once (its batch slot, KV caches
and worker session are freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wanspec import __version__
from wanspec.errors import WanspecError
from wanspec.runtime.controller import RemoteEngine
from wanspec.serve.drain import Drain, DrainGate
from wanspec.serve.errors import APIError, error_body
from wanspec.serve.metrics import ServerMetrics
from wanspec.serve.protocol import (
    DEFAULT_MAX_CHOICES,
    MAX_CHARS_PER_TOKEN,
    ChatCompletionRequest,
    CompletionRequest,
    ModelLimits,
    Plan,
    Render,
    plan_chat,
    plan_completion,
)
from wanspec.serve.responses import (
    DONE,
    ChunkWriter,
    Collector,
    chat_response,
    completion_response,
    sse,
)
from wanspec.serve.service import ChoiceResult, Generation, Service

log = logging.getLogger("wanspec.serve")

REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # what we echo: visible ASCII, bounded
MIN_REQUEST_BYTES = 1 << 20
MAX_DEFAULT_REQUEST_BYTES = 8 << 20
DEFAULT_MAX_QUEUED = 256


def default_max_request_bytes(max_context: int) -> int:
    """Room for a full-context prompt (characters, JSON-escaped, or token ids), within
    [1 MiB, 8 MiB]: more cannot fit the model anyway, and reading it costs memory and time."""
    return min(max(2 * MAX_CHARS_PER_TOKEN * max_context, MIN_REQUEST_BYTES),
               MAX_DEFAULT_REQUEST_BYTES)


@dataclass(frozen=True)
class ServiceLimits:
    """The service's caps (the controller's ``--max-*`` flags)."""

    max_request_bytes: int | None = None  # None: default_max_request_bytes(the context)
    max_prompts_per_request: int = DEFAULT_MAX_CHOICES  # prompts x n
    max_queued_requests: int = DEFAULT_MAX_QUEUED  # generation requests in flight


# ---- middleware -----------------------------------------------------------------------------


class RequestIdAndAuth:
    """``X-Request-Id`` echoed (or made) on every response; Bearer auth on ``/v1/*``.

    A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which would sit between a
    streaming response and the client's disconnect).
    """

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        if (self.expected is not None and scope["path"].startswith("/v1")
                and scope.get("method") != "OPTIONS"
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected)):
            response = JSONResponse(error_body("Unauthorized: this server needs an API key "
                                               "(Authorization: Bearer KEY).", status=401,
                                               type="AuthenticationError"), status_code=401)
            await response(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


class EventStream(StreamingResponse):
    """An SSE response that always watches for the client leaving (whatever ASGI version the
    server speaks) and then stops its body at once: the body's ``finally`` cancels the
    request."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---- the app --------------------------------------------------------------------------------


def _error(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{loc}: {msg}{more}" if loc else f"{msg}{more}"), (loc.split(".")[0] or None)


def chat_renderer(tokenizer: Any) -> Render:
    """The tokenizer's own chat template; a model without one answers chat with a 400."""
    def render(messages: list[dict[str, str]], add_generation_prompt: bool,
               kwargs: dict[str, Any]) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise APIError("This model has no chat template (chat_template in its "
                           "tokenizer_config.json), so /v1/chat/completions cannot format "
                           "messages; use /v1/completions with a prompt.", param="messages")
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt,
                                                 **{k: v for k, v in kwargs.items()
                                                    if k not in ("tokenize", "conversation",
                                                                 "add_generation_prompt")})
        except Exception as exc:  # a template's own refusal (raise_exception) or a bug in it
            raise APIError(f"the chat template could not format these messages: {exc}",
                           param="messages") from None
        if not isinstance(text, str):
            raise APIError("the chat template did not produce text", param="messages")
        return text

    return render


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused (413) past ``cap`` bytes before it is all read: by its Content-Length
    when given, else by counting as it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _too_large(int(declared), cap)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(size, cap, more=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, cap: int, more: bool = False) -> APIError:
    return APIError(f"the request body is {'over ' if more else ''}{size} bytes; this server "
                    f"accepts at most {cap} (--max-request-bytes).", status=413)


def create_app(engine: RemoteEngine, *, model_name: str, api_key: str | None = None,
               registry: CollectorRegistry | None = None,
               service_limits: ServiceLimits = ServiceLimits()) -> FastAPI:
    """The controller service over ``engine`` (which it then owns: shutting the app down
    closes the engine's worker links)."""
    disable_created_metrics()  # no ``*_created`` series, as vLLM exposes them
    metrics = ServerMetrics(engine, model_name, registry)
    service = Service(engine, model_name, metrics)
    target = engine.target
    limits = ModelLimits(vocab_size=target.vocab_size,
                         max_context=int(getattr(target, "max_context", 1 << 20)),
                         max_choices=service_limits.max_prompts_per_request)
    max_body = (service_limits.max_request_bytes
                or default_max_request_bytes(limits.max_context))
    drain = Drain(service_limits.max_queued_requests)
    # tokenizing and templating take seconds for long prompts: off the event loop (which pings
    # the workers and answers /health), one at a time (tokenizers are not all thread-safe)
    tokenizing = ThreadPoolExecutor(1, thread_name_prefix="wanspec-tokenize")
    render = chat_renderer(target.tokenizer)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = engine.workers
        connecting = []
        if pool is not None:  # connect early, so /health shows the workers' state at once
            connecting = [asyncio.create_task(link.ensure()) for link in pool.links]
        try:
            yield
        finally:
            for t in connecting:
                t.cancel()
            tokenizing.shutdown(wait=False, cancel_futures=True)
            if pool is not None:
                await pool.close()

    app = FastAPI(title="wanspec", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = metrics
    app.state.drain = drain  # the server's graceful stop runs through it (serve.server)
    app.state.max_request_bytes = max_body

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(APIError(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), status=exc.status_code),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", status=500),
                            status_code=500)

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        """The request, or a 4xx: every way a body can be bad is the client's error."""
        body = await read_body(request, max_body)
        try:
            data = json.loads(body)
        except ValueError as exc:  # not UTF-8, not JSON
            raise APIError(f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise APIError("the request body is not valid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise APIError("the request body must be a JSON object")
        try:
            req = model.model_validate(data)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise APIError(message, param=param) from None
        except RecursionError:
            raise APIError("the request body is nested too deeply") from None
        if req.model is not None and req.model != model_name:
            raise APIError(f"The model `{req.model}` does not exist.", status=404,
                           type="NotFoundError", param="model")
        return req

    async def planned(make: Callable[[], Plan]) -> Plan:
        """The plan, made in the tokenizing thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(tokenizing, _planned, make)

    async def run(request: Request, plan: Plan, *, chat: bool) -> Response:
        if drain.aborted is not None:  # the grace period ended while it was being planned
            raise drain.aborted
        arrived = asyncio.get_running_loop().time()
        prefix = "chatcmpl" if chat else "cmpl"
        rid = f"{prefix}-{request.state.request_id}"
        created = int(time.time())
        gen = service.generation(plan, arrived)
        gen.start()
        drain.generations.add(gen)
        if plan.stream:
            return EventStream(_stream(gen, plan, rid, created, chat=chat))
        try:
            return await _whole(request, gen, plan, rid, created, chat=chat)
        finally:
            drain.generations.discard(gen)

    async def _whole(request: Request, gen: Generation, plan: Plan, rid: str, created: int, *,
                     chat: bool) -> Response:
        col = Collector(target.decode, chat)

        async def consume() -> None:
            async for ev in gen.events():
                col.add(ev)

        work = asyncio.create_task(consume())
        gone = asyncio.create_task(_until_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left (or we are cancelled): stop decoding now
                work.cancel()
                gen.cancel()
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # nobody is listening
        _raise_engine_error(work.exception())
        results = [gen.results[i] for i in sorted(gen.results)]
        if chat:
            body = chat_response(rid, created, model_name, results, col, n=plan.n,
                                 logprobs=plan.logprobs is not None,
                                 token_ids=plan.return_token_ids, prompt=plan.prompts[0])
        else:
            body = completion_response(rid, created, model_name, results, col, n=plan.n,
                                       logprobs=plan.logprobs is not None,
                                       token_ids=plan.return_token_ids, prompts=plan.prompts)
        return JSONResponse(body)

    async def _stream(gen: Generation, plan: Plan, rid: str, created: int, *,
                      chat: bool) -> AsyncIterator[str]:
        writer = ChunkWriter(rid, created, model_name, target.decode, chat=chat,
                             logprobs=plan.logprobs is not None, token_ids=plan.return_token_ids,
                             continuous_usage=plan.continuous_usage,
                             prompt_tokens=[len(p) for p in plan.prompts], n=plan.n)
        try:
            for index in range(len(plan.prompts) * plan.n):
                for chunk in writer.first(index):
                    yield chunk
            async for ev in gen.events():
                for chunk in writer.event(ev):
                    yield chunk
            if plan.include_usage:
                results: list[ChoiceResult] = [gen.results[i] for i in sorted(gen.results)]
                yield writer.usage_chunk(results)
        except (APIError, WanspecError) as exc:
            err = exc if isinstance(exc, APIError) else APIError(str(exc))
            yield sse(err.body())
        except Exception as exc:  # the response has started: the error goes in the stream
            log.exception("request failed while streaming")
            yield sse(error_body(f"internal error: {type(exc).__name__}", status=500))
        finally:
            gen.cancel()  # the client left (the stream was cancelled) or it ended
            drain.generations.discard(gen)
        yield DONE

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req: CompletionRequest = await parse(request, CompletionRequest)
        plan = await planned(lambda: plan_completion(req, target.encode, limits))
        return await run(request, plan, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req: ChatCompletionRequest = await parse(request, ChatCompletionRequest)
        plan = await planned(lambda: plan_chat(req, render, target.encode, limits))
        return await run(request, plan, chat=True)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": started, "owned_by": "wanspec",
            "root": str(getattr(target, "path", model_name)), "parent": None,
            "max_model_len": limits.max_context}]}

    @app.get("/health")
    async def health() -> Response:
        """200 while serving: ``ok`` when a worker is up (or none is configured), ``degraded``
        when every worker is down (requests then decode at the busy site alone; it never fails
        them); each worker's own state beside it.  503 ``stopping`` once a stop has begun, so
        a load balancer takes this replica out while it drains."""
        workers = engine.workers.describe() if engine.workers is not None else []
        up = sum(1 for w in workers if w["up"])
        status = "stopping" if drain.stopping else "ok" if up or not workers else "degraded"
        return JSONResponse({"status": status, "target": "ready", "workers_up": up,
                             "workers_down": len(workers) - up, "workers": workers},
                            status_code=503 if drain.stopping else 200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(DrainGate, drain=drain)
    app.add_middleware(RequestIdAndAuth, api_key=api_key)  # (outermost: added last)
    return app


def _planned(make: Callable[[], Plan]) -> Plan:
    """A plan, with the engine's own refusals of bad input (a WanspecError) as 400s."""
    try:
        return make()
    except WanspecError as exc:
        raise APIError(str(exc)) from None


def _raise_engine_error(exc: BaseException | None) -> None:
    if exc is None:
        return
    if isinstance(exc, APIError):
        raise exc
    if isinstance(exc, WanspecError):
        raise APIError(str(exc)) from exc
    raise exc
