"""Shared CLI plumbing: model loading, validation, and turning errors into one line."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from wanspec.errors import WanspecError
from wanspec.threads import (SiteRegistry, ThreadPlan, available_cpus, cgroup_cpu_limit, cpu_set,
                             plan_threads)

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


# the most any count flag may be: beyond it the value is a typo, not a setting
COUNT_LIMITS: dict[str, int] = {
    "--gamma": 64,  # draft tokens per window: acceptance makes more than a few dozen useless
    "--branches": 64,  # branch lanes of a draft tree: each is a KV cache and passes at the worker
    "--max-tokens": 1_000_000,
    "--max-batch": 4096,
    "--worker-max-batch": 4096,
    "--count": 100_000,
}


def check_count(flag: str, value: int, *, minimum: int = 1) -> None:
    """A count flag: at least ``minimum`` (1, or 0 where 0 turns something off) and at most its
    :data:`COUNT_LIMITS` entry (one-line error)."""
    check(value >= minimum, f"{flag} must be >= {minimum}, got {value}")
    check(value <= COUNT_LIMITS[flag], f"{flag} must be at most {COUNT_LIMITS[flag]:,}, got {value}")


def on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the option whose parameter is ``name`` was given on the command line (not left
    at its default, nor taken from its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def check_only_with(ctx: typer.Context, needed: str, active: bool,
                    flags: dict[str, str]) -> None:
    """Refuse each of ``flags`` (``{"--flag": parameter name}``) given on the command line
    while ``needed`` is not in force (``active``): a flag that would be ignored is an error."""
    if active:
        return
    for flag, name in flags.items():
        check(not on_command_line(ctx, name), f"{flag} only applies with {needed}")


def check_can_listen(host: str, port: int, flag: str, *, udp: bool = False) -> None:
    """Refuse (one line naming ``flag``) a listen address this process cannot bind, before the
    models load rather than after: bind a socket as the real server would (TCP with
    SO_REUSEADDR; UDP, for QUIC, without: asyncio no longer sets it on datagram sockets), then
    close it.  Port 0 (any free port) always binds."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WanspecError(f"cannot listen on {flag} {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, kind) as sock:
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise WanspecError(f"cannot listen on {flag} {host}:{port} "
                               f"({'UDP' if udp else 'TCP'}): {exc.strerror or exc}") from None


def configure_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        check(threads >= 1, f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


class SiteThreads:
    """A ``worker``/``controller`` process's torch threads, split with the other wanspec sites
    on this machine (:mod:`wanspec.threads`); registered while the command runs."""

    def __init__(self, role: str, explicit: int | None, registry: SiteRegistry | None = None):
        import torch

        check(explicit is None or explicit >= 1, f"threads must be >= 1, got {explicit}")
        self.role, self.explicit = role, explicit
        self.registry = registry or SiteRegistry()
        self.cpus = cpu_set()
        self.available = available_cpus(self.cpus, cgroup_cpu_limit())
        self.default = torch.get_num_threads()  # torch's own choice, before any is set
        self.threads = self.default

    def plan(self) -> ThreadPlan:
        peers = [p for p in self.registry.peers() if p.shares(self.cpus)]
        return plan_threads(role=self.role, available=self.available, default=self.default,
                            explicit=self.explicit, peers=peers)

    def start(self) -> None:
        """Set this process's threads (before any model loads: torch threads started later
        take the count) and register, printing the split or the warning."""
        import torch

        plan = self.plan()
        if plan.threads is not None:
            torch.set_num_threads(plan.threads)
            self.threads = plan.threads
        if plan.message:
            err_console.print(escape(plan.message), soft_wrap=True)
        self._register()

    def rebalance(self) -> int | None:
        """For a long-running site: the new thread count if sites came or went since, else
        None (explicit ``--threads`` never changes).  Prints the new split."""
        if self.explicit is not None:
            return None
        plan = self.plan()
        threads = plan.threads if plan.threads is not None else self.default
        if threads == self.threads:
            return None
        self.threads = threads
        self._register()
        err_console.print(escape(plan.message or (
            f"wanspec {self.role}: back to {threads} torch threads, "
            "no other wanspec site on this machine now")), soft_wrap=True)
        return threads

    def _register(self) -> None:
        try:
            self.registry.register(self.role, self.threads, self.cpus)
        except OSError:
            pass  # no writable runtime directory: this site only goes unseen by later ones

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.registry.unregister()


@contextlib.contextmanager
def site_threads(role: str, threads: int | None) -> Iterator[SiteThreads]:
    """A site process's threads; :meth:`SiteThreads.start` (once the flags are checked)
    registers it on this machine until the command ends."""
    site = SiteThreads(role, threads)
    try:
        yield site
    finally:
        site.stop()


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


# image formats a --plot file may name (matplotlib writes these without extra packages); no
# extension: PNG, with .png added
PLOT_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp", "eps", "tif", "tiff")


def check_output(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written before minutes of work, not after."""
    if path is not None:
        parent = Path(path).expanduser().parent
        check(parent.is_dir(), f"cannot write {flag} {path}: no directory {parent}")
        check(not Path(path).is_dir(), f"cannot write {flag} {path}: it is a directory")


def check_plot(path: Path | None) -> None:
    """:func:`check_output` for ``--plot``, and an image format matplotlib can write."""
    check_output(path, "--plot")
    if path is not None:
        suffix = Path(path).suffix.lower().lstrip(".")
        check(suffix in ("", *PLOT_FORMATS),
              f"cannot draw --plot {path}: .{suffix} is not an image format; use "
              f"{', '.join('.' + f for f in PLOT_FORMATS)}")


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
