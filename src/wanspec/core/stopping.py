"""Stop conditions applied token by token, so that every mode stops at exactly the same token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from wanspec.errors import WanspecError

Detokenize = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class StopCriteria:
    """When to stop: EOS ids, a token budget, stop strings (needs a ``detokenize`` function)."""

    max_tokens: int
    eos_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    detokenize: Detokenize | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise WanspecError(f"max tokens must be >= 1, got {self.max_tokens}")
        if self.stop_strings and self.detokenize is None:
            raise ValueError("stop strings need a detokenize function")
        if any(s == "" for s in self.stop_strings):
            raise WanspecError("stop strings must not be empty")

    def reason_after(self, output: Sequence[int]) -> str | None:
        """Why decoding stops right after ``output`` (the output tokens so far), or None."""
        if output and output[-1] in self.eos_ids:
            return "eos"
        if self.stop_strings:
            assert self.detokenize is not None
            text = self.detokenize(output)
            prev = self.detokenize(output[:-1])
            for s in self.stop_strings:
                # a stop string counts once it is complete; only new completions are checked
                if s in text and s not in prev:
                    return "stop_string"
        if len(output) >= self.max_tokens:
            return "max_tokens"
        return None

    def reason_after_token(self, last: int, n_output: int) -> str | None:
        """:meth:`reason_after` for criteria without stop strings, from the newest token and the
        output length alone (no copy of the output: it runs once per committed token)."""
        assert not self.stop_strings
        if last in self.eos_ids:
            return "eos"
        if n_output >= self.max_tokens:
            return "max_tokens"
        return None


class Transcript:
    """Prompt plus committed output; commits apply stop criteria one token at a time."""

    def __init__(self, prompt: Sequence[int], stop: StopCriteria) -> None:
        if not prompt:
            raise WanspecError("the prompt must contain at least one token")
        self.tokens: list[int] = list(prompt)
        self.n_prompt = len(prompt)
        self.stop = stop
        self.finish_reason: str | None = None

    @property
    def output(self) -> list[int]:
        return self.tokens[self.n_prompt :]

    @property
    def n_output(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def remaining(self) -> int:
        return self.stop.max_tokens - (len(self.tokens) - self.n_prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def commit(self, new: Sequence[int]) -> list[int]:
        """Append ``new`` until a stop condition fires; returns what was actually appended."""
        if self.finished:
            return []
        taken: list[int] = []
        tokens, stop = self.tokens, self.stop
        for tok in new:
            tokens.append(tok)
            taken.append(tok)
            if stop.stop_strings:
                reason = stop.reason_after(self.output)
            else:
                reason = stop.reason_after_token(tok, len(tokens) - self.n_prompt)
            if reason is not None:
                self.finish_reason = reason
                break
        return taken
