"""The examples run as a user runs them after README's install: the Python one through the public
API, the shell one without an activated virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _env(**extra: str) -> dict[str, str]:
    """This checkout's sources first (the venv may hold another copy), no activated venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "WANSPEC")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_python_api_example():
    r = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py"), "--max-tokens", "12"],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ms/token" in r.stdout and "remote (40ms RTT)" in r.stdout
    assert "Loading weights" not in r.stdout + r.stderr  # no progress bars in normal output
    assert "Warning" not in r.stderr, r.stderr


def test_readme_python_block_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                       timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "", r.stderr  # no progress bars or warnings


def test_python_api_is_typed_and_small():
    import wanspec

    assert (ROOT / "src" / "wanspec" / "py.typed").is_file()
    for name in wanspec.__all__:
        assert getattr(wanspec, name) is not None
    assert wanspec.load_pair is wanspec.api.load_pair  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_two_sites_example_runs_without_an_activated_venv():
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "wanspec").exists():
        pytest.skip("wanspec is not installed in this interpreter's environment")
    # the script finds <repo>/.venv/bin/wanspec; when the tests run from another environment,
    # point it there as README's install would have
    extra = {} if (ROOT / ".venv" / "bin" / "wanspec").exists() else {
        "WANSPEC": str(venv_bin / "wanspec")}
    r = subprocess.run(["bash", str(EXAMPLES / "two_sites_localhost.sh")], capture_output=True,
                       text=True, timeout=600, env=_env(PATH="/usr/bin:/bin", **extra))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical to target-only: yes" in r.stdout
    assert "Loading weights" not in r.stdout + r.stderr
    assert "Warning" not in r.stderr, r.stderr
