"""The JSON the API answers with, shaped as vLLM's OpenAI server shapes it.

Non-streamed: ``text_completion`` / ``chat.completion`` objects.  Streamed: one chunk per commit
of a choice (``text_completion`` / ``chat.completion.chunk``), the last with its
``finish_reason``, then, with ``stream_options.include_usage``, a chunk with ``choices: []`` and
the usage.  The SSE framing itself (``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``) is
:func:`sse`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from wanspec.serve.logprobs import TokenLogprob
from wanspec.serve.service import ChoiceEvent, ChoiceResult

Decode = Callable[[Sequence[int]], str]


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


DONE = sse("[DONE]")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": None}


def total_usage(results: Sequence[ChoiceResult], n: int) -> dict[str, Any]:
    """Usage of a whole request: each prompt counted once (not once per choice), as vLLM does."""
    prompt = sum(r.prompt_tokens for r in results if r.index % n == 0)
    return usage(prompt, sum(len(r.token_ids) for r in results))


# ---- logprobs -------------------------------------------------------------------------------


def completion_logprobs(lps: Sequence[TokenLogprob], decode: Decode,
                        offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset`` is the text length before."""
    tokens, offsets = [], []
    for lp in lps:
        offsets.append(offset)
        s = decode([lp.token])
        tokens.append(s)
        offset += len(s)
    return {"text_offset": offsets, "token_logprobs": [lp.logprob for lp in lps],
            "tokens": tokens,
            "top_logprobs": [{decode([t]): v for t, v in lp.top} for lp in lps]}


def chat_logprobs(lps: Sequence[TokenLogprob], decode: Decode) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        s = decode([token])
        return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**entry(lp.token, lp.logprob),
                         "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps]}


# ---- whole responses ------------------------------------------------------------------------


class Collector:
    """Gathers a non-streamed request's events into its choices' logprobs."""

    def __init__(self, decode: Decode, chat: bool) -> None:
        self.decode = decode
        self.chat = chat
        self.logprobs: dict[int, list[TokenLogprob]] = {}

    def add(self, ev: ChoiceEvent) -> None:
        if ev.logprobs is not None:
            self.logprobs.setdefault(ev.index, []).extend(ev.logprobs)

    def logprobs_of(self, index: int, wanted: bool) -> dict[str, Any] | None:
        if not wanted:
            return None
        lps = self.logprobs.get(index, [])
        if self.chat:
            return chat_logprobs(lps, self.decode)
        return completion_logprobs(lps, self.decode, 0)


def _extras(r: ChoiceResult, token_ids: bool, prompt: Sequence[int] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if token_ids:
        out["token_ids"] = list(r.token_ids)
        if prompt is not None:
            out["prompt_token_ids"] = list(prompt)
    if r.spec is not None:
        out["metrics"] = r.spec
    return out


def completion_response(rid: str, created: int, model: str, results: Sequence[ChoiceResult],
                        col: Collector, *, n: int, logprobs: bool, token_ids: bool,
                        prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
    choices = [{"index": r.index, "text": r.text, "logprobs": col.logprobs_of(r.index, logprobs),
                "finish_reason": r.finish_reason, "stop_reason": r.stop_reason,
                "prompt_logprobs": None,
                **_extras(r, token_ids, prompts[r.index // n])} for r in results]
    body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created,
                            "model": model, "choices": choices,
                            "usage": total_usage(results, n), "system_fingerprint": None}
    if len(results) == 1 and results[0].spec is not None:
        body["metrics"] = results[0].spec
    return body


def chat_response(rid: str, created: int, model: str, results: Sequence[ChoiceResult],
                  col: Collector, *, n: int, logprobs: bool, token_ids: bool,
                  prompt: Sequence[int]) -> dict[str, Any]:
    choices = [{"index": r.index,
                "message": {"role": "assistant", "content": r.text, "tool_calls": []},
                "logprobs": col.logprobs_of(r.index, logprobs),
                "finish_reason": r.finish_reason, "stop_reason": r.stop_reason,
                **_extras(r, token_ids, prompt)} for r in results]
    body: dict[str, Any] = {"id": rid, "object": "chat.completion", "created": created,
                            "model": model, "choices": choices,
                            "usage": total_usage(results, n), "system_fingerprint": None}
    if len(results) == 1 and results[0].spec is not None:
        body["metrics"] = results[0].spec
    if token_ids:
        body["prompt_token_ids"] = list(prompt)
    return body


# ---- stream chunks --------------------------------------------------------------------------


class ChunkWriter:
    """Turns a streamed request's events into SSE chunks, vLLM's way."""

    def __init__(self, rid: str, created: int, model: str, decode: Decode, *, chat: bool,
                 logprobs: bool, token_ids: bool, continuous_usage: bool,
                 prompt_tokens: Sequence[int], n: int) -> None:
        self.rid, self.created, self.model = rid, created, model
        self.decode = decode
        self.chat = chat
        self.logprobs = logprobs
        self.token_ids = token_ids
        self.continuous_usage = continuous_usage
        self.prompt_tokens = list(prompt_tokens)  # per prompt
        self.n = n
        self.offsets: dict[int, int] = {}  # text sent per choice (completions' text_offset)
        self.generated: dict[int, int] = {}
        self.started: set[int] = set()

    def _chunk(self, choice: dict[str, Any], index: int) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.rid,
                                "object": "chat.completion.chunk" if self.chat
                                else "text_completion",
                                "created": self.created, "model": self.model,
                                "choices": [choice]}
        if self.continuous_usage:
            body["usage"] = usage(self.prompt_tokens[index // self.n],
                                  self.generated.get(index, 0))
        return body

    def first(self, index: int) -> list[str]:
        """Chat streams open each choice with the assistant's role, as vLLM does."""
        if not self.chat or index in self.started:
            return []
        self.started.add(index)
        return [sse(self._chunk({"index": index, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}, index))]

    def event(self, ev: ChoiceEvent) -> list[str]:
        out = self.first(ev.index)
        self.generated[ev.index] = self.generated.get(ev.index, 0) + len(ev.tokens)
        r = ev.result
        if r is None and not ev.text and not (self.logprobs or self.token_ids):
            return out  # nothing to show yet (text held back)
        lp = None
        if self.logprobs:
            lps = ev.logprobs or []
            if self.chat:
                lp = chat_logprobs(lps, self.decode)
            else:
                lp = completion_logprobs(lps, self.decode, self.offsets.get(ev.index, 0))
        self.offsets[ev.index] = self.offsets.get(ev.index, 0) + len(ev.text)
        if self.chat:
            delta: dict[str, Any] = {"content": ev.text} if (ev.text or r is None) else {}
            choice: dict[str, Any] = {"index": ev.index, "delta": delta, "logprobs": lp,
                                      "finish_reason": r.finish_reason if r else None}
        else:
            choice = {"index": ev.index, "text": ev.text, "logprobs": lp,
                      "finish_reason": r.finish_reason if r else None}
        choice["stop_reason"] = r.stop_reason if r else None
        if self.token_ids:
            choice["token_ids"] = list(ev.tokens)
        if r is not None and r.spec is not None:
            choice["metrics"] = r.spec
        return out + [sse(self._chunk(choice, ev.index))]

    def usage_chunk(self, results: Sequence[ChoiceResult]) -> str:
        return sse({"id": self.rid,
                    "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.created, "model": self.model, "choices": [],
                    "usage": total_usage(results, self.n)})
