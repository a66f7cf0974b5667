"""A causal LM loaded from a local directory, with per-request KV caches that roll back.

The interface is deliberately small (gpt-fast style): :meth:`CausalLM.forward` cuts a request's
cache back to ``start`` tokens, feeds ``tokens`` and returns logits for every fed position.  That
one call covers prefill, single-token decode, multi-token verification and catch-up after a
rollback.  Forwards are synchronous; the runtime runs them off the event loop on the model's own
single-thread executor so two models and the network progress concurrently.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from wanspec.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not at module level: the runtime imports this module for
# its types, and ``wanspec simulate`` (via the emulate records it shares) must not pay ~1 s of
# torch import per process.

log = logging.getLogger(__name__)

_DTYPES = {  # name -> torch attribute
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown torch device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    import torch

    name = _DTYPES[dtype]
    if name is None:  # auto: half precision is slow or unsupported for CPU matmuls
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, name)


class KVCache:
    """One request's KV cache on one model, tracking how many positions it holds."""

    def __init__(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.length = 0

    def crop(self, length: int) -> None:
        if length > self.length:
            raise ValueError(f"cannot extend a cache of {self.length} tokens to {length}")
        if length < self.length:
            self.cache.crop(length - self.length)  # transformers 5: minus the tokens to remove
            self.length = length


class CausalLM:
    """A causal LM + tokenizer from a local directory (never a hub download)."""

    def __init__(self, path: str | Path, *, dtype: str = "auto", device: str = "auto",
                 name: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path).expanduser()
        self.name = name or self.path.name
        if not self.path.is_dir():
            raise ModelLoadError(f"model directory not found: {self.path}")
        if not (self.path / "config.json").is_file():
            raise ModelLoadError(f"{self.path} is not a model directory (no config.json)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                self.path, local_files_only=True, dtype=self.dtype
            )
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"could not load a causal LM from {self.path}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{self.name}"
        )

    @classmethod
    def from_model(cls, model, tokenizer, *, name: str = "model") -> "CausalLM":
        """Wrap an already-built transformers model (tests build tiny ones from a config)."""
        self = cls.__new__(cls)
        self.path = Path("<memory>")
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{name}"
        )
        return self

    def sibling(self, name: str) -> "CausalLM":
        """Same weights, own executor: a second site's copy without a second load.

        Forwards only read the weights and each request has its own KV cache, so two executors
        may run them concurrently.
        """
        other = self.__class__.__new__(self.__class__)
        other.__dict__.update(self.__dict__)
        other.name = name
        other.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"wanspec-{name}"
        )
        return other

    @property
    def eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = self.model.generation_config.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    @property
    def max_context(self) -> int:
        """Longest sequence (prompt + output) the model's positions cover."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 20)

    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        from wanspec.errors import WanspecError

        if prompt_len + max_tokens > self.max_context:
            raise WanspecError(
                f"prompt ({prompt_len} tokens) + max tokens ({max_tokens}) exceeds the context "
                f"of {self.name} ({self.max_context} tokens)")

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, cache: KVCache, start: int, tokens: Sequence[int]) -> torch.Tensor:
        """Cut ``cache`` back to ``start`` tokens, feed ``tokens``; logits ``[len(tokens), vocab]``."""
        import torch

        if not tokens:
            raise ValueError("forward needs at least one token")
        with torch.inference_mode():
            cache.crop(start)
            if cache.length != start:
                raise ValueError(f"cache holds {cache.length} tokens, cannot feed at position {start}")
            ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
            pos = torch.arange(start, start + len(tokens), device=self.device).unsqueeze(0)
            out = self.model(input_ids=ids, position_ids=pos, past_key_values=cache.cache,
                             use_cache=True)
            cache.length = start + len(tokens)
            logits = out.logits[0].float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return logits

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
