"""The compiled simulator core: keyed by source digest, loaded only on request, identical results.

The end-to-end test compiles the real modules with mypyc into a temporary cache (about a minute
on 2 cores) and compares ``wanspec simulate --json`` on the compiled and the pure-Python core, in
fresh processes, over models and link conditions that take different code paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wanspec.errors import WanspecError
from wanspec.simulate import compiled

SRC = Path(compiled.__file__).resolve().parents[2]


def _copy_sources(dest: Path) -> Path:
    for rel in (*map(compiled._module_file, compiled.MODULES), *compiled._TYPE_SOURCES):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SRC / rel, out)
    return dest


def test_digest_follows_every_compiled_and_type_source(tmp_path: Path) -> None:
    root = _copy_sources(tmp_path)
    base = compiled.digest(root)
    assert base == compiled.digest(SRC)  # only the sources count, not where they are
    for rel in ("wanspec/core/policy.py", "wanspec/protocol/messages.py",
                "wanspec/simulate/config.py"):
        f = root / rel
        text = f.read_text()
        f.write_text(text + "\n# edited\n")
        assert compiled.digest(root) != base, rel
        f.write_text(text)
    assert compiled.digest(root) == base


def test_no_build_means_pure_python_or_a_clear_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSPEC_CACHE_DIR", str(tmp_path))
    assert compiled.find_build() is None
    assert not compiled.activate("auto").compiled
    assert "--build-core" in compiled.activate("auto").note
    assert not compiled.activate("pure").compiled
    with pytest.raises(WanspecError, match="--build-core"):
        compiled.activate("compiled")
    with pytest.raises(WanspecError, match="unknown --core 'fast'"):
        compiled.activate("fast")
    assert not compiled.active()


def test_an_incomplete_build_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSPEC_CACHE_DIR", str(tmp_path))
    d = compiled.build_dir()
    d.mkdir(parents=True)
    (d / f"{compiled.GROUP}__mypyc{compiled._SUFFIX}").write_bytes(b"")  # the group library only
    assert compiled.find_build() is None


def test_cores_already_imported_keep_auto_pure(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # this test process imported the pure-Python cores long ago: a build must not be mixed in
    monkeypatch.setenv("WANSPEC_CACHE_DIR", str(tmp_path))
    import wanspec.core.controller  # noqa: F401

    monkeypatch.setattr(compiled, "find_build", lambda root=SRC: tmp_path)
    choice = compiled.activate("auto")
    assert not choice.compiled and "imported before" in choice.note
    with pytest.raises(WanspecError, match="already imported"):
        compiled.activate("compiled")
    assert not compiled.active()


def test_the_cli_imports_no_core_before_choosing_one() -> None:
    code = ("import sys, wanspec.cli.app\n"
            "from wanspec.simulate.compiled import MODULES\n"
            "print([m for m in MODULES if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _have_mypyc() -> bool:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return shutil.which(os.environ.get("CC", "cc")) is not None or shutil.which("gcc") is not None


# (arguments, what they exercise): i.i.d. sweep with every policy; bursty acceptance with jitter,
# bandwidth and loss spikes; a recorded trace with its own costs; short windows, a fixed
# lookahead cap, per-token draft costs and other policy thresholds
CASES = [
    ["--sweep", "rtt=0,30,90", "--alpha", "0.8", "-n", "48", "--requests", "4"],
    ["--match", "markov", "--burst", "0.7", "--rtt", "50ms", "--jitter", "8ms",
     "--bandwidth", "20mbit", "--loss", "0.05", "-n", "40", "--requests", "3",
     "--sweep", "alpha=0.6,0.9"],
    ["--trace", str(Path(__file__).parent / "data" / "small_trace.jsonl"), "--rtt", "40ms",
     "--requests", "2"],
    ["--gamma", "2", "--lookahead", "6", "--draft-per-token-ms", "0.5", "--verify-per-token-ms",
     "0", "--busy-pass-weight", "1", "--rtt", "70ms", "--sweep", "entropy_threshold=0.5,1.5",
     "-n", "32", "--requests", "2"],
]


@pytest.mark.skipif(not _have_mypyc(), reason="needs mypy (mypyc) and a C compiler")
def test_compiled_core_gives_identical_results(tmp_path: Path) -> None:
    env = {**os.environ, "WANSPEC_CACHE_DIR": str(tmp_path / "cache")}
    exe = [sys.executable, "-m", "wanspec.cli.app", "simulate"]
    first = subprocess.run([*exe, "--build-core", "--sweep", "rtt=0,40", "-n", "16",
                            "--requests", "1", "--jobs", "1"],
                           env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "compiling the simulator core" in first.stderr
    assert "on the compiled core" in first.stdout
    d = Path(env["WANSPEC_CACHE_DIR"]) / "compiled-core" / compiled.digest()
    assert (d / f"{compiled.GROUP}__mypyc{compiled._SUFFIX}").is_file()
    for args in CASES:
        runs = {}
        for core in ("compiled", "pure"):
            p = subprocess.run([*exe, *args, "--json", "--jobs", "1", "--core", core],
                               env=env, capture_output=True, text=True)
            assert p.returncode == 0, p.stdout + p.stderr
            runs[core] = json.loads(p.stdout)
        assert runs["compiled"] == runs["pure"], args
        assert all(r["identical_to_target_only"] for r in runs["pure"])
    # the sweep's pool processes run the compiled core too, with the same records
    p = subprocess.run([*exe, *CASES[0], "--json", "--jobs", "2", "--core", "compiled"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    q = subprocess.run([*exe, *CASES[0], "--json", "--jobs", "1", "--core", "pure"],
                       env=env, capture_output=True, text=True)
    assert json.loads(p.stdout) == json.loads(q.stdout)


def test_prune_keeps_the_newest_builds(tmp_path: Path) -> None:
    import time

    dirs = []
    for i in range(compiled.KEEP_BUILDS + 3):
        d = tmp_path / f"digest{i:02d}"
        d.mkdir()
        os.utime(d, (time.time() - 1000 + i, time.time() - 1000 + i))
        dirs.append(d)
    (tmp_path / "digestXX.tmp123").mkdir()  # another build's staging directory: left alone
    keep = dirs[0]  # the oldest, but the one just built
    compiled._prune(tmp_path, keep=keep)
    left = sorted(d.name for d in tmp_path.iterdir())
    assert keep.name in left and "digestXX.tmp123" in left
    assert [d.name for d in dirs[-(compiled.KEEP_BUILDS - 1):]] == [
        n for n in left if n.startswith("digest") and "." not in n and n != keep.name]


def test_building_without_mypy_says_what_to_install(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANSPEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled, "_mypy_version", lambda: "none")
    with pytest.raises(WanspecError, match="pip install mypy"):
        compiled.build()
    assert not any(tmp_path.iterdir())


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("WANSPEC_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(compiled, "_mypy_version", lambda: "1.0")  # (whether or not it is here)
    with pytest.raises(WanspecError, match="WANSPEC_CACHE_DIR"):
        compiled.build()
