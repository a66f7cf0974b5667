"""Batch-invariant execution (``--exact``): a position's logits do not depend on the pass.

Speculative decoding verifies several positions in one pass and batching runs many requests in
one pass, while target-only decoding computes one position per pass.  Floating-point results of
the usual kernels depend on the shapes they run at (a matrix product of 1 row takes another
kernel than one of 8; a reduction over 40 keys is associated differently from one over 41), so
the same position's logits differ in the last bits (~1e-5 on the shipped pair in fp32;
``benchmarks/batch_exactness.py``).  A token can then differ from target-only decoding wherever
the target's two best logits are closer than that.

In exact mode every operation whose result depends on shape runs at a fixed shape:

* every linear layer runs on tiles of exactly :data:`TILE` rows (the last one zero-padded), so
  each row goes through the same matrix product whatever else is in the pass;
* attention runs on query tiles of :data:`TILE` rows against a static cache of fixed length (the
  model's context; positions past a query's own are masked to exact zeros), so scores, softmax
  and the weighted sum reduce over the same number of terms in the same order every time.

* element-wise transcendental functions (the MLP's activation) are vectorised in chunks, and an
  element that falls in a chunk's scalar tail is computed by other code than one in the vector
  body, so rows are padded to a multiple of :data:`ALIGN` before the activation: every element
  then sits at the same place in its chunk whatever the pass;
* rotary embeddings are looked up in a table computed once for every position.

Everything else in a Llama-family model (embeddings, RMSNorm, products and sums) is row-wise or
correctly rounded.  That rows of a fixed-shape product do not depend on their neighbours is a
property of the kernels, not of the arithmetic, so :func:`self_check` verifies it when the model
is loaded and exact mode refuses to run where it does not hold.  The price: every pass computes at least
``TILE`` rows per linear layer and attends over the whole context, several times the work of a
single-token decode on a CPU (on a memory-bound GPU, padding rows is nearly free).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from wanspec.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from wanspec.models.backend import CausalLM

TILE = 16  # rows per matrix-product tile
ALIGN = 64  # elements: a multiple of every CPU/GPU vector loop's unrolled width
ATTENTION = "wanspec_exact"


def _tiled_linear(self: Any, x: torch.Tensor) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    pad = (-n) % TILE
    if pad:
        rows = torch.cat([rows, rows.new_zeros(pad, rows.shape[1])])
    out = torch.cat([F.linear(rows[i : i + TILE], self.weight, self.bias)
                     for i in range(0, rows.shape[0], TILE)])
    return out[:n].reshape(*x.shape[:-1], -1)


def _exact_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention in query tiles of ``TILE`` rows over all ``key.shape[2]`` cached positions."""
    import torch

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves ``groups`` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    batch, heads, n, dim = query.shape
    length = key.shape[2]
    pad = (-n) % TILE
    if pad:
        query = torch.cat([query, query.new_zeros(batch, heads, pad, dim)], dim=2)
        attention_mask = torch.cat([attention_mask, attention_mask[:, :, :1].expand(-1, -1, pad, -1)],
                                   dim=2)
    tiles = (n + pad) // TILE
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(batch, heads, tiles, TILE, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)[:, :, None]) * scale  # [b, h, tiles, TILE, len]
    scores = scores + attention_mask.reshape(batch, 1, tiles, TILE, length)
    weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    out = torch.matmul(weights, value[:, :, None])  # [b, h, tiles, TILE, dim]
    return out.reshape(batch, heads, tiles * TILE, dim)[:, :, :n].transpose(1, 2).contiguous(), None


def _aligned(act: Any) -> Any:
    """``act`` applied to rows padded to a multiple of ``ALIGN`` elements."""
    import torch

    class AlignedActivation(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pad = (-x.shape[-1]) % ALIGN
            if not pad:
                return self.act(x)
            padded = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
            return self.act(padded)[..., : x.shape[-1]]

    return AlignedActivation()


def _rotary_table(module: Any, length: int) -> None:
    """Replace ``module.forward(x, position_ids)`` by a lookup in its own output for all positions."""
    import torch

    compute = module.forward
    tables: dict[tuple[Any, Any], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.dtype, x.device)
        if key not in tables:
            cos, sin = compute(x, torch.arange(length, device=x.device)[None])
            tables[key] = (cos[0], sin[0])
        cos, sin = tables[key]
        return cos[position_ids], sin[position_ids]

    module.forward = forward


def make_exact(lm: CausalLM) -> None:
    """Switch ``lm`` (its shared weights, so every sibling too) to batch-invariant execution."""
    import torch
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _exact_attention)
    length = -(-lm.max_context // ALIGN) * ALIGN
    for module in list(lm.model.modules()):
        if isinstance(module, torch.nn.Linear):
            module.forward = types.MethodType(_tiled_linear, module)
        if isinstance(getattr(module, "act_fn", None), torch.nn.Module):
            module.act_fn = _aligned(module.act_fn)
        if type(module).__name__.endswith("RotaryEmbedding"):
            _rotary_table(module, length)
    try:
        lm.model.set_attn_implementation(ATTENTION)
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"--exact: {lm.name} cannot take a custom attention ({exc})") from exc
    lm.fixed_length = length


def self_check(lm: CausalLM) -> None:
    """Decode a probe alone, one position per pass, and again inside passes of other shapes
    (windows, a long prefill spanning several tiles, next to other requests, at other rows);
    every logit must agree bit for bit, or exact mode cannot be promised on this platform."""
    import torch

    from wanspec.models.backend import Feed

    vocab = lm.vocab_size
    probe = [(7 * i + 3) % vocab for i in range(40)]
    others = [[(11 * i + 5) % vocab for i in range(9)], [(13 * i + 1) % vocab for i in range(3)]]
    alone = lm.new_cache()
    rows = [lm.forward(alone, 0, probe[:4])]
    rows += [lm.forward(alone, i, probe[i : i + 1]) for i in range(4, len(probe))]
    want = torch.cat(rows)
    caches = [lm.new_cache() for _ in range(4)]
    first = lm.forward_batch([Feed(caches[0], 0, others[0]), Feed(caches[1], 0, probe[:4]),
                              Feed(caches[2], 0, others[1])])[1]
    window = lm.forward_batch([Feed(caches[2], 3, [1, 2]), Feed(caches[1], 4, probe[4:9]),
                               Feed(caches[0], 9, [4])])[1]
    rest = lm.forward_batch([Feed(caches[1], 9, probe[9:])])[0]
    whole = lm.forward_batch([Feed(caches[0], 2, [5]), Feed(caches[3], 0, probe)])[1]
    got = [torch.cat([first, window, rest]), whole]
    for c in [alone, *caches]:
        c.close()
    for g in got:
        if not torch.equal(g, want):
            worst = float((g - want).abs().max())
            raise ModelLoadError(
                f"--exact: {lm.name}'s kernels on this platform give different results for the "
                f"same position in passes of different shapes (up to {worst:.1e}); run without "
                "--exact")
