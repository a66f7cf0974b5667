"""``wanspec``: generate locally, run a controller or a worker, or emulate a WAN deployment."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from wanspec import __version__
from wanspec.cli.common import configure_threads, quiet_libraries, user_errors
from wanspec.cli.render import print_generation

app = typer.Typer(
    name="wanspec",
    help="Speculative decoding across a wide-area network (lossless: identical to the target alone).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False)


class GenerateMode(str, Enum):
    target = "target"
    sd = "sd"


def _version(value: bool) -> None:
    if value:
        console.print(f"wanspec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Speculative decoding with the draft model at a remote site."""


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt text."),
    mode: GenerateMode = typer.Option(GenerateMode.sd, "--mode", help="target: target-only; sd: standard speculative decoding at one site."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="Maximum new tokens."),
    gamma: int = typer.Option(4, "--gamma", help="Draft tokens per verification window."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", help="0 disables top-k."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed: output is a function of (seed, position)."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at the EOS token."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory (default: shipped pair)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory (default: shipped pair)."),
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="Emulate: ms per target pass (virtual clock)."),
    draft_ms: Optional[float] = typer.Option(None, "--draft-ms", help="Emulate: ms per draft pass."),
    verify_per_token_ms: float = typer.Option(0.0, "--verify-per-token-ms", help="Emulate: extra ms per additional token in a target pass."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16, float16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (text, token_ids, metrics)."),
) -> None:
    """Decode one prompt at a single site: target-only or standard speculative decoding."""
    quiet_libraries()
    with user_errors():
        from wanspec.cli.loading import load_models, timing_from_flags
        from wanspec.runtime.engine import LocalEngine
        from wanspec.sampling import SamplingParams

        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        from wanspec.cli.common import check

        check(gamma >= 1, f"--gamma must be >= 1, got {gamma}")
        check(max_tokens >= 1, f"--max-tokens must be >= 1, got {max_tokens}")
        timing = timing_from_flags(target_ms, draft_ms, verify_per_token_ms)
        configure_threads(threads)
        tgt, drf = load_models(target, draft, need_draft=mode is GenerateMode.sd, dtype=dtype,
                               device=device)
        engine = LocalEngine(tgt, drf, timing)
        result = engine.generate(prompt, mode=mode.value, gamma=gamma, max_tokens=max_tokens,
                                 sampling=sampling, stop_strings=stop or (),
                                 ignore_eos=ignore_eos).to_dict()
    if as_json:
        print(json.dumps(result))
    else:
        print_generation(result, console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
