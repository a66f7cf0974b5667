"""Dependency hygiene: no deprecated library API on the forward path, declared ranges hold.

The forward test runs a pass of the shipped model with every warning recorded, so that a library
deprecating what :meth:`CausalLM.forward_batch` passes (transformers renamed ``past_key_values``
to ``cache`` in 5.24 and removes the old name in 5.40) fails here, before the removal breaks it.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from wanspec.models.defaults import DEFAULT_TARGET

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


@pytest.fixture(scope="module")
def shipped_target():
    if not (DEFAULT_TARGET / "config.json").is_file():
        pytest.skip(f"the shipped target is not in {DEFAULT_TARGET}")
    from wanspec.models.backend import CausalLM

    lm = CausalLM(DEFAULT_TARGET, device="cpu")
    yield lm
    lm.close()


def test_forward_uses_no_deprecated_api(shipped_target):
    from wanspec.models.backend import Feed

    lm = shipped_target
    a, b = lm.new_cache(), lm.new_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm.forward(a, 0, [1, 2, 3, 4])  # prefill
        lm.forward(a, 4, [5])  # decode
        lm.forward(a, 2, [6, 7])  # rollback and verify
        lm.forward_batch([Feed(a, 4, [8]), Feed(b, 0, [1, 2])])  # batched
    found = [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
             for w in caught if issubclass(w.category, DEPRECATIONS)]
    assert not found, "a forward pass uses deprecated library API:\n" + "\n".join(found)
    a.close()
    b.close()


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = _project()
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


@pytest.mark.parametrize("extra", [None, "test"])
def test_installed_versions_are_in_the_declared_ranges(extra):
    """The tests run on what pyproject allows (each range has an upper bound, too)."""
    outside, unbounded = [], []
    for req in _requirements(extra):
        version = metadata.version(req.name)
        if not req.specifier.contains(version, prereleases=True):
            outside.append(f"{req.name} {version} (declared {req.specifier})")
        if not any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier):
            unbounded.append(str(req))
    assert not outside, "installed outside pyproject's ranges: " + ", ".join(outside)
    assert not unbounded, "no upper bound: " + ", ".join(unbounded)


def test_every_runtime_dependency_is_imported_by_wanspec():
    """A declared dependency that wanspec's own code never imports is dead weight."""
    imports: set[str] = set()
    for path in (ROOT / "src" / "wanspec").rglob("*.py"):
        imports.update(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.M))
    unused = [str(r) for r in _requirements() if r.name.replace("-", "_") not in imports]
    assert not unused, "declared in [project].dependencies but never imported: " + ", ".join(unused)


def test_license_file_is_the_declared_license():
    project = _project()
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
