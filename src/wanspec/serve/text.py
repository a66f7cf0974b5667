"""Output text as the API returns it: stop strings cut out, streamed without ever taking back.

The engine stops at the token that completes a stop string (every mode stops there, see
:mod:`wanspec.core.stopping`); the API, like vLLM and OpenAI, returns the text *before* the stop
string unless ``include_stop_str_in_output``.  While streaming, the last ``len(longest stop) - 1``
characters are held back (they could be the start of a stop string) and so is a trailing
incomplete UTF-8 character, so a chunk never has to be retracted.
"""

from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT = "\ufffd"  # what a byte-level decoder shows for an incomplete UTF-8 sequence


def cut_at_stop(text: str, stops: Sequence[str], include: bool = False) -> tuple[str, str | None]:
    """``text`` up to its first stop string (and through it if ``include``), and that string."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return text, None
    i, s = best
    return text[: i + len(s)] if include else text[:i], s


class TextStream:
    """Turns the growing output (token ids) into text deltas that are never taken back."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str],
                 include_stop: bool = False) -> None:
        self.decode = decode
        self.stops = tuple(stops)
        self.include_stop = include_stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.sent = ""
        self.stop_string: str | None = None

    def final_text(self, output: Sequence[int]) -> str:
        """The whole text of a finished output, as a non-streamed response returns it."""
        text, self.stop_string = cut_at_stop(self.decode(output), self.stops, self.include_stop)
        return text

    def delta(self, output: Sequence[int], finished: bool) -> str:
        """The text to send now, given the whole output so far."""
        if finished:
            text = self.final_text(output)
        else:
            text = self.decode(output)
            cut, found = cut_at_stop(text, self.stops, self.include_stop)
            if found is None:
                text = text[: max(len(text) - self.hold, 0)]
                while text.endswith(REPLACEMENT):  # an incomplete character: wait for its bytes
                    text = text[:-1]
            else:  # (the engine ends the request on this token: nothing comes after)
                text = cut
        # (a byte-level BPE decoder only ever appends; should another rewrite earlier text, what
        # was sent cannot be taken back, so only the text past it in length is sent)
        new = text[len(self.sent):]
        self.sent += new
        return new
