"""Shared CLI plumbing: model loading, validation, and turning errors into one line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from wanspec.errors import WanspecError

err_console = Console(stderr=True, highlight=False)


def quiet_libraries() -> None:
    """Keep library chatter (transformers warnings, progress bars) off the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # aioquic logs every failed handshake; wanspec reports each as its own one-line error
    logging.getLogger("quic").setLevel(logging.CRITICAL)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False,
                      soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`WanspecError` as one line and exit non-zero, with no traceback."""
    try:
        yield
    except WanspecError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130)


def check(cond: bool, message: str) -> None:
    if not cond:
        raise WanspecError(message)


def configure_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        check(threads >= 1, f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def check_output(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written before minutes of work, not after."""
    if path is not None:
        parent = Path(path).expanduser().parent
        check(parent.is_dir(), f"cannot write {flag} {path}: no directory {parent}")
        check(not Path(path).is_dir(), f"cannot write {flag} {path}: it is a directory")


def read_prompt(text: str) -> str:
    """``-p TEXT`` as given, or ``-p -``: the prompt read from stdin (one trailing newline
    dropped, as shells drop it from ``$(...)``)."""
    if text != "-":
        return text
    data = sys.stdin.read()
    return data[:-1] if data.endswith("\n") else data


def write_file(fn: Callable[[], None], path: Path) -> None:
    """Write an output file; an OS error is the user's one-line error, not a traceback."""
    try:
        fn()
    except OSError as exc:
        raise WanspecError(f"cannot write {path}: {exc.strerror or exc}") from None
