"""Log-probabilities of the committed tokens, from the target's own distribution.

A committed token is the target's choice at its position, but the passes that chose it (a
verification window, a plain step, a pass shared with other requests) only return choices.  So a
request that asks for logprobs keeps one more KV cache on the target and feeds it the committed
tokens as they come: one extra target pass per commit, on the busy site's device (counted in its
busy time), only for such requests.  The values are vLLM's default ``raw_logprobs``: the log-softmax
of the target's logits, before temperature and top-k/top-p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from wanspec.runtime.placed import PlacedModel


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # the most likely tokens at that position, best first


class LogprobScorer:
    """Scores one request's output tokens, commit by commit, on the target."""

    def __init__(self, placed: PlacedModel, prompt: Sequence[int], top_n: int) -> None:
        self.placed = placed
        self.cache = placed.lm.new_cache()
        self.tokens = list(prompt)
        self.fed = 0
        self.top_n = top_n

    async def score(self, new: Sequence[int]) -> list[TokenLogprob]:
        """Logprobs of ``new``, the tokens committed after everything scored so far."""
        if not new:
            return []
        start = self.fed
        self.tokens.extend(new)
        end = len(self.tokens) - 1  # the last token predicts nothing we need yet
        feed = self.tokens[start:end]
        top_n = self.top_n
        lm = self.placed.lm

        def work() -> list[TokenLogprob]:
            import torch

            logits = lm.forward(self.cache, start, feed)[-len(new):]
            logp = torch.log_softmax(logits.double(), dim=-1)
            out = []
            for row, tok in zip(logp, new):
                top: tuple[tuple[int, float], ...] = ()
                if top_n:
                    vals, ids = torch.topk(row, top_n)
                    top = tuple((int(i), float(v)) for i, v in zip(ids, vals))
                out.append(TokenLogprob(int(tok), float(row[tok]), top))
            return out

        result = await self.placed.device.run(work, executor=lm.executor, cost=self.placed.cost,
                                              n_tokens=len(feed), label="logprobs",
                                              context=end)
        self.fed = end
        return result

    def close(self) -> None:
        self.cache.close()
