"""docs/cli.md must describe the CLI as it is (regenerate with scripts/gen_cli_docs.sh)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current():
    typer_bin = Path(sys.executable).parent / "typer"
    if not typer_bin.exists() and shutil.which("typer") is None:
        pytest.skip("typer command not installed")
    exe = str(typer_bin) if typer_bin.exists() else "typer"
    out = subprocess.run([exe, "wanspec.cli.app", "utils", "docs", "--name", "wanspec"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    out = out.replace("# `wanspec`\n", "## `wanspec`\n", 1).replace("\n## `wanspec ", "\n### `wanspec ")
    expected = (ROOT / "docs" / "cli.header.md").read_text() + out
    assert (ROOT / "docs" / "cli.md").read_text() == expected, "run scripts/gen_cli_docs.sh"
