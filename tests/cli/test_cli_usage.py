"""Every command's --help and usage errors: help for every option, defaults shown, plain flags,
and the same one-line ``error: ...`` for a bad choice as for any other bad value."""

from __future__ import annotations

import sys

import pytest
import typer.main
from rich.text import Text

from wanspec.cli.app import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def _options(name: str):
    return [p for p in GROUP.commands[name].params  # type: ignore[attr-defined]
            if p.name != "help"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_and_argument_has_help(name):
    missing = [p.opts[0] for p in _options(name) if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"wanspec {name}: no help for {', '.join(missing)}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_text_survives_rich_markup(name):
    """``--help`` renders help as rich markup: a ``[default: ...]`` written in it vanished."""
    for p in _options(name):
        text = getattr(p, "help", None) or ""
        assert Text.from_markup(text).plain == text, f"wanspec {name} {p.opts[0]}: {text!r}"


@pytest.mark.parametrize("name", COMMANDS)
def test_booleans_are_plain_flags(name):
    pairs = [f"{p.opts[0]}/{p.secondary_opts[0]}" for p in _options(name)
             if getattr(p, "is_flag", False) and p.secondary_opts]
    assert not pairs, f"wanspec {name}: on/off pairs {pairs}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default(runner, name):
    r = runner.invoke(app, [name, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    with_default = [p for p in _options(name) if p.default is not None
                    and not getattr(p, "is_flag", False) and not p.required]
    assert " ".join(r.output.split()).count("[default:") == len(with_default), r.output


def test_hand_written_defaults_are_shown(runner):
    r = runner.invoke(app, ["simulate", "--help"], terminal_width=400, env={"COLUMNS": "400"})
    flat = " ".join(r.output.split())
    assert "(default: 30, a 70B-class target; with --trace: the recorded value)" in flat
    assert "(default: 16; with --trace: one per recorded request)" in flat


@pytest.mark.parametrize("args,needle", [
    (["worker", "--transport", "udp"], "invalid value for '--transport': 'udp' is not one of"),
    (["generate", "--mode", "fast", "-p", "x"], "invalid value for '--mode'"),
    (["emulate", "--gamma", "four"], "invalid value for '--gamma'"),
    (["controller", "--prompt", "x"], "missing option '--worker'"),
    (["emulate", "--bogus"], "no such option: --bogus"),
    (["bogus"], "no such command 'bogus'"),
    (["simulate", "--jitter"], "option '--jitter' requires an argument"),
], ids=" ".join)
def test_usage_errors_are_one_line(runner, narrow_stderr, args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    err = r.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err and "--help" in err, err
    assert r.stdout == "" and "Traceback" not in r.output


def test_an_error_before_click_knows_the_command_still_names_it(runner, narrow_stderr,
                                                                monkeypatch):
    monkeypatch.setattr(sys, "argv", ["wanspec", "generate", "-p"])
    r = runner.invoke(app, ["generate", "-p"])
    assert r.exit_code == 2 and "(see wanspec generate --help)" in r.stderr, r.stderr
