"""Loading the model pair and timing configuration from CLI flags."""

from __future__ import annotations

from pathlib import Path

from wanspec.errors import WanspecError
from wanspec.models.backend import CausalLM, resolve_device, resolve_dtype
from wanspec.runtime.engine import TimingConfig


def timing_from_flags(target_ms: float | None, draft_ms: float | None,
                      verify_per_token_ms: float = 0.0) -> TimingConfig:
    if target_ms is None and draft_ms is None:
        if verify_per_token_ms:
            raise WanspecError("--verify-per-token-ms needs --target-ms and --draft-ms")
        return TimingConfig()
    if target_ms is None or draft_ms is None:
        raise WanspecError("--target-ms and --draft-ms go together (emulated device timing)")
    if min(target_ms, draft_ms, verify_per_token_ms) < 0:
        raise WanspecError("--target-ms, --draft-ms and --verify-per-token-ms must be >= 0")
    return TimingConfig.emulate(target_ms, draft_ms, verify_per_token_ms)


def check_model_flags(dtype: str, device: str) -> None:
    """``--dtype`` and ``--device``, refused in one line before any model loads."""
    resolve_dtype(dtype, resolve_device(device))


def load_models(target: Path | None, draft: Path | None, *, need_draft: bool, dtype: str = "auto",
                device: str = "auto", exact: bool = False) -> tuple[CausalLM, CausalLM | None]:
    """The target (batch-invariant if ``exact``: only its choices make the output) and the draft
    (:func:`wanspec.load_pair`)."""
    from wanspec.api import load_pair

    return tuple(load_pair(target, draft, with_draft=need_draft, dtype=dtype,  # type: ignore[return-value]
                           device=device, exact=exact))
