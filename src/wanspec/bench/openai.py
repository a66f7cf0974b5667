"""One streamed request to an OpenAI-compatible server, measured as a streaming client sees it.

Definitions (those of vLLM's ``benchmark_serving``, with one difference noted):

* **TTFT**: from sending the request to the first chunk that carries output (text, chat content
  or reasoning, or token ids).  Chunks that carry none (a chat role announcement, a chunk with
  only a finish reason, the usage chunk) are not output: vLLM times any chunk with ``choices``.
* **ITL**: the gaps between consecutive output chunks.  A chunk may carry several tokens (a
  speculative decoder commits a verified window at once), and a gap is counted once per chunk,
  not divided among its tokens: ITL describes how the stream *arrives*.
* **TPOT**: ``(E2E - TTFT) / (output tokens - 1)`` for requests of more than one token: the
  mean time per token after the first, whatever the chunking.
* **E2E**: from sending the request to the end of the stream (``data: [DONE]``).
* **Output tokens**: ``usage.completion_tokens`` of the stream's usage chunk (requested with
  ``stream_options.include_usage``); without one, the tokens the chunks carried (token ids
  where given, otherwise one per output chunk), and the record says so (``tokens_from``).

Errors are results, never exceptions: each failed request has a kind (``http 500``,
``timeout``, ``connect``, ``dropped``, ``malformed``, ``stream error``, ``network``) and the
message that explains it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from wanspec.bench.sse import DONE, Event, SSEParser
from wanspec.errors import WanspecError

_ENDPOINTS = {"/completions": False, "/chat/completions": True}
MAX_MESSAGE = 300  # characters of an error message kept per request


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: the API base (``.../v1``) and whether they are chat completions."""

    api_base: str
    chat: bool = False

    @property
    def url(self) -> str:
        return self.api_base + ("/chat/completions" if self.chat else "/completions")

    @property
    def models_url(self) -> str:
        return self.api_base + "/models"


def resolve_endpoint(url: str, chat: bool = False, what: str = "--url") -> Endpoint:
    """``http://host:8000``, ``http://host:8000/v1`` or the full ``.../v1/completions`` /
    ``.../v1/chat/completions`` -> an :class:`Endpoint` (``/v1`` is appended to any other path,
    as OpenAI clients do with a server's root)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WanspecError(f"invalid {what} {url!r}: use http(s)://HOST[:PORT][/v1]")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise WanspecError(f"invalid {what} {url!r}: bad port") from None
    if parts.query or parts.fragment:
        raise WanspecError(f"invalid {what} {url!r}: no query or fragment, please")
    path = parts.path.rstrip("/")
    for suffix, is_chat in _ENDPOINTS.items():
        if path.endswith("/v1" + suffix):
            if chat and not is_chat:
                raise WanspecError(f"{what} {url!r} is the completions endpoint but --chat was "
                                   "given: drop one")
            path, chat = path[: -len(suffix)], is_chat
            break
    if not path.endswith("/v1"):
        path += "/v1"
    return Endpoint(urlunsplit((parts.scheme, parts.netloc, path, "", "")), chat)


@dataclass(frozen=True)
class RequestOptions:
    model: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens


def request_body(endpoint: Endpoint, opts: RequestOptions, prompt: str) -> dict[str, Any]:
    """The JSON body vLLM's benchmark sends: streaming, usage in the last chunk."""
    body: dict[str, Any] = {"model": opts.model, "stream": True,
                            "stream_options": {"include_usage": True},
                            "temperature": opts.temperature}
    if endpoint.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        body["max_completion_tokens"] = opts.max_tokens
    else:
        body["prompt"] = prompt
        body["max_tokens"] = opts.max_tokens
    if opts.seed is not None:
        body["seed"] = opts.seed
    if opts.ignore_eos:
        body["ignore_eos"] = True
    return body


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass
class RequestRecord:
    """One request's measurements (seconds, from :func:`time.perf_counter`)."""

    index: int = 0  # the request's place in the run (its prompt's)
    start_s: float = 0.0  # when it was sent, from the run's start
    ok: bool = False
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    chunks: int = 0  # output chunks
    output_tokens: int = 0
    prompt_tokens: int | None = None
    tokens_from: str = "chunks"  # "usage" when the server reported completion_tokens
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None for one token or none)."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def fail(self, kind: str, message: str) -> "RequestRecord":
        self.ok, self.error_kind = False, kind
        message = " ".join(message.split())
        self.error = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "ok": self.ok, "start_s": self.start_s,
                "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s,
                "output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens,
                "tokens_from": self.tokens_from, "chunks": self.chunks, "status": self.status,
                "error_kind": self.error_kind, "error": self.error}


class _Malformed(Exception):
    """The stream broke the OpenAI streaming format."""


class _StreamError(Exception):
    """The server reported an error inside the stream (``data: {"error": ...}``)."""


def _error_text(body: Any) -> str:
    """The message of an OpenAI-style (``{"error": {"message"}}``) or FastAPI-style error."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return err[key]
        if isinstance(err, str):
            return err
    return json.dumps(body)[:MAX_MESSAGE]


def _chunk_output(choice: Any, chat: bool) -> tuple[bool, int | None]:
    """Whether a choice carries output, and how many tokens if it says (token ids, logprobs)."""
    if not isinstance(choice, dict):
        raise _Malformed(f"a choice is not an object: {str(choice)[:80]}")
    if chat:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _Malformed("delta is not an object")
        texts = [delta.get(k) for k in ("content", "reasoning_content", "reasoning")]
    else:
        texts = [choice.get("text")]
    if any(t is not None and not isinstance(t, str) for t in texts):
        raise _Malformed("text is not a string")
    ids = choice.get("token_ids")  # vLLM's return_token_ids
    if ids is None and isinstance(choice.get("logprobs"), dict):
        lp = choice["logprobs"]
        ids = lp.get("content") if chat else lp.get("tokens")
    n = len(ids) if isinstance(ids, list) else None
    return bool(any(texts) or n), n


class _Stream:
    """The reading of one response's events into its record."""

    def __init__(self, rec: RequestRecord, chat: bool, t0: float) -> None:
        self.rec, self.chat, self.t0 = rec, chat, t0
        self.last_output = t0  # when the previous output chunk arrived
        self.done = False  # data: [DONE] seen

    def event(self, ev: Event) -> None:
        if self.done:
            return  # nothing counts after [DONE]
        if ev.data.strip() == DONE:
            self.done = True
        elif ev.event == "error":
            raise _StreamError(ev.data)
        else:
            self.chunk(ev.data, time.perf_counter())

    def chunk(self, data: str, now: float) -> None:
        """One ``data:`` payload other than ``[DONE]``."""
        rec = self.rec
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _Malformed(f"chunk is not JSON ({exc.msg}): {data[:80]!r}") from None
        if not isinstance(obj, dict):
            raise _Malformed(f"chunk is not a JSON object: {data[:80]!r}")
        if "error" in obj:
            raise _StreamError(_error_text(obj))
        choices = obj.get("choices", [])
        if not isinstance(choices, list):
            raise _Malformed("choices is not a list")
        usage = obj.get("usage")
        if isinstance(usage, dict):  # the last chunk; or every chunk, cumulative (vLLM option)
            if isinstance(usage.get("completion_tokens"), int):
                rec.output_tokens, rec.tokens_from = usage["completion_tokens"], "usage"
            if isinstance(usage.get("prompt_tokens"), int):
                rec.prompt_tokens = usage["prompt_tokens"]
        outputs = [_chunk_output(c, self.chat) for c in choices]
        if not any(carries for carries, _ in outputs):
            return
        if rec.ttft_s is None:
            rec.ttft_s = now - self.t0
        else:
            rec.itl_s.append(now - self.last_output)
        self.last_output = now
        rec.chunks += 1
        if rec.tokens_from == "chunks":
            rec.output_tokens += sum(n if n is not None else int(c) for c, n in outputs)


async def stream_request(client: httpx.AsyncClient, endpoint: Endpoint, opts: RequestOptions,
                         prompt: str) -> RequestRecord:
    """Send one streaming request and measure it; every failure becomes the record's error."""
    rec = RequestRecord()
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", endpoint.url,
                                 json=request_body(endpoint, opts, prompt)) as resp:
            rec.status = resp.status_code
            if resp.status_code != 200:
                raw = (await resp.aread())[:4096].decode("utf-8", "replace")
                try:
                    detail = _error_text(json.loads(raw))
                except json.JSONDecodeError:
                    detail = raw.strip() or resp.reason_phrase
                return rec.fail(f"http {resp.status_code}", detail)
            ctype = resp.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                return rec.fail("malformed", f"expected a text/event-stream response, got "
                                             f"{ctype or 'no content type'}")
            parser, stream = SSEParser(), _Stream(rec, endpoint.chat, t0)
            async for line in resp.aiter_lines():
                if (ev := parser.feed(line)) is not None:
                    stream.event(ev)
            if (ev := parser.close()) is not None:
                stream.event(ev)
            if not stream.done:
                return rec.fail("malformed", "the stream ended without data: [DONE]")
            rec.e2e_s = time.perf_counter() - t0
            rec.ok = True
            return rec
    except _Malformed as exc:
        return rec.fail("malformed", str(exc))
    except _StreamError as exc:
        return rec.fail("stream error", str(exc))
    except httpx.TimeoutException as exc:
        return rec.fail("timeout", f"{type(exc).__name__}: {exc}" if str(exc)
                        else type(exc).__name__)
    except httpx.ConnectError as exc:
        return rec.fail("connect", f"cannot connect to {endpoint.url}: {exc}")
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return rec.fail("dropped", f"connection dropped: {exc}")
    except httpx.HTTPError as exc:
        return rec.fail("network", f"{type(exc).__name__}: {exc}")


async def first_model(client: httpx.AsyncClient, endpoint: Endpoint) -> str:
    """The first model ``GET /v1/models`` lists (what ``--model`` defaults to)."""
    hint = "; give --model"
    try:
        resp = await client.get(endpoint.models_url)
    except httpx.TransportError as exc:  # nothing answered: --model would not help
        raise WanspecError(f"cannot reach {endpoint.models_url}: "
                           f"{str(exc) or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise WanspecError(f"cannot list models at {endpoint.models_url}: "
                           f"{str(exc) or type(exc).__name__}{hint}") from None
    if resp.status_code != 200:
        try:
            detail = _error_text(resp.json())
        except ValueError:
            detail = resp.text.strip()[:200] or resp.reason_phrase
        raise WanspecError(f"cannot list models at {endpoint.models_url}: HTTP "
                           f"{resp.status_code}: {detail}{hint}")
    try:
        data = resp.json()["data"]
        return str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise WanspecError(f"{endpoint.models_url} lists no model{hint}") from None
