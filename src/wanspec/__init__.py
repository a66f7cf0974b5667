"""wanspec: speculative decoding with the draft model at a remote, under-used site.

The target model stays at the busy site (the controller) and verifies; the draft model runs at a
cheap site (the worker).  Output is lossless: token-identical to the target decoding alone.

The public API (documented in :mod:`wanspec.api`)::

    from wanspec import load_pair, generate, emulate_deployment, serve

Its names are imported on first use, so that ``import wanspec`` (and the command line) does not
pay for torch until a model is wanted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "GenerationResult", "LocalEngine", "ModelPair", "SamplingParams", "TimingConfig",
    "WanspecError", "__version__", "deployment", "emulate_deployment", "generate", "load_pair",
    "remote_engine", "serve",
]

if TYPE_CHECKING:  # what type checkers and editors see (py.typed)
    from wanspec.api import (
        GenerationResult,
        LocalEngine,
        ModelPair,
        SamplingParams,
        TimingConfig,
        WanspecError,
        deployment,
        emulate_deployment,
        generate,
        load_pair,
        remote_engine,
        serve,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from wanspec import api

        return getattr(api, name)
    raise AttributeError(f"module 'wanspec' has no attribute {name!r}")
