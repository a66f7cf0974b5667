"""Server-sent events, parsed line by line (sans-I/O), as OpenAI and vLLM stream them.

Why a parser rather than ``line.removeprefix("data: ")``: the SSE format allows comments
(``: keep-alive``), events with several ``data:`` lines (joined by newlines), a ``data:`` without
its space, and named events; a client that only strips a prefix misreads those as malformed
chunks.  OpenAI-compatible servers send one ``data: {json}`` line per event, an empty line after
it, and ``data: [DONE]`` last.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"


class SSEParser:
    """Feed it the stream's lines (without their line ending); it returns complete events."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> Event | None:
        """One line in; the event it completes (an empty line ends an event), if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alives
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        # id and retry do not matter to a one-shot stream; unknown fields are ignored (the spec)
        return None

    def close(self) -> Event | None:
        """The end of the stream: an event still open is delivered (lenient: the spec drops it,
        but a server that omits the last empty line has still sent its data)."""
        return self._dispatch()

    def _dispatch(self) -> Event | None:
        if not self._data:
            self._event = ""
            return None
        ev = Event("\n".join(self._data), self._event or "message")
        self._data, self._event = [], ""
        return ev
