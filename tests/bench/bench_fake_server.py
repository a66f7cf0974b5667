"""A small OpenAI-compatible server for the client tools' tests: real sockets, vLLM's framing.

Why not a web framework: the tests need what a framework hides -- a connection dropped in the
middle of a chunked body, a chunk that is not JSON, a stream without ``[DONE]``, exact delays
between chunks.  HTTP/1.1 with keep-alive and chunked transfer encoding is a few lines of asyncio,
run on its own event loop in a thread so the client under test has its loop to itself.

Each request is answered as its :class:`Reply` says (chosen per request by a function of the
request's index and body), streamed the way vLLM streams: ``data: {json}\\n\\n`` per chunk, a
usage chunk when ``stream_options.include_usage`` asks for it, then ``data: [DONE]\\n\\n``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Reply:
    first_delay_s: float = 0.0  # before the first output chunk (what TTFT should measure)
    gap_s: float = 0.0  # between output chunks
    tokens: int = 6
    tokens_per_chunk: int = 1
    token_ids: bool = False  # put vLLM's token_ids in each chunk
    usage: bool = True  # honour include_usage
    role_chunk: bool = True  # chat: send {"role": "assistant"} at once, before any token
    status: int = 200  # anything else: an OpenAI-style error body
    content_type: str = "text/event-stream; charset=utf-8"
    malformed_at: int | None = None  # this output chunk is not JSON
    drop_at: int | None = None  # the connection is cut before this output chunk
    stream_error_at: int | None = None  # data: {"error": ...} instead of this chunk
    done: bool = True  # end with data: [DONE]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    reply: Callable[[int, dict], Reply] = lambda i, body: Reply()
    model: str = "fake-model"
    models_status: int = 200
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    # ---- running in a thread ----------------------------------------------------------------
    def __enter__(self) -> "FakeOpenAI":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # ---- HTTP/1.1 -----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                body = json.loads(raw) if raw else None
                index = len(self.completions())
                self.seen.append(Seen(method, path, headers, body))
                if method == "GET" and path.endswith("/v1/models"):
                    await self._models(writer)
                elif method == "POST" and path.endswith(("/v1/completions",
                                                         "/v1/chat/completions")):
                    self.in_flight += 1
                    self.peak = max(self.peak, self.in_flight)
                    try:
                        keep = await self._stream(writer, self.reply(index, body), body,
                                                  chat=path.endswith("/chat/completions"))
                    finally:
                        self.in_flight -= 1
                    if not keep:
                        return
                else:
                    self._json(writer, 404, {"error": {"message": f"no route {path}"}})
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _json(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    async def _models(self, writer: asyncio.StreamWriter) -> None:
        if self.models_status != 200:
            self._json(writer, self.models_status, {"error": {"message": "no models here"}})
        else:
            self._json(writer, 200, {"object": "list",
                                     "data": [{"id": self.model, "object": "model"},
                                              {"id": "other", "object": "model"}]})

    async def _stream(self, writer: asyncio.StreamWriter, r: Reply, body: dict,
                      chat: bool) -> bool:
        """Answer one completion; False when the connection was cut."""
        if r.status != 200:
            self._json(writer, r.status, {"error": {"message": f"injected {r.status}",
                                                    "type": "server_error"}})
            return True
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {r.content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())

        def send(payload: str) -> None:
            data = payload.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def event(obj: Any) -> None:
            send(f"data: {json.dumps(obj)}\n\n")

        base = {"id": "cmpl-1", "created": 0, "model": body["model"],
                "object": "chat.completion.chunk" if chat else "text_completion"}
        if chat and r.role_chunk:
            event({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "content": ""}}]})
            await writer.drain()
        send(": keep-alive comment\n\n")
        await asyncio.sleep(r.first_delay_s)
        sent, chunk = 0, 0
        while sent < r.tokens:
            if chunk:
                await asyncio.sleep(r.gap_s)
            if r.drop_at == chunk:
                await writer.drain()
                writer.transport.abort()
                return False
            n = min(r.tokens_per_chunk, r.tokens - sent)
            if r.malformed_at == chunk:
                send("data: {\"choices\": [{\"text\": \n\n")
            elif r.stream_error_at == chunk:
                event({"error": {"message": "injected stream error", "code": 500}})
            else:
                text = "ab" * n
                choice: dict[str, Any] = ({"index": 0, "delta": {"content": text}} if chat
                                          else {"index": 0, "text": text})
                if r.token_ids:
                    choice["token_ids"] = list(range(sent, sent + n))
                choice["finish_reason"] = "length" if sent + n == r.tokens else None
                event({**base, "choices": [choice]})
            await writer.drain()
            sent, chunk = sent + n, chunk + 1
        if r.usage and (body.get("stream_options") or {}).get("include_usage"):
            event({**base, "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": r.tokens,
                             "total_tokens": 3 + r.tokens}})
        if r.done:
            send("data: [DONE]\n\n")
        send("")  # the last chunk of a chunked body
        await writer.drain()
        return True
