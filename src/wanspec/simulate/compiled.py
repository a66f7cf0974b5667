"""The simulator's hot modules compiled with mypyc, built on demand and cached by source digest.

Why: ``wanspec simulate`` drives the real sans-I/O cores, ~4 worker passes and ~10 core calls
per committed token; in CPython that is 30-60 µs of interpreter work per token.  The same
modules compiled with mypyc (the compiler mypy and black ship with) run ~4x faster, unchanged.

Why a cache rather than compiling at install time: wanspec is installed editable, and a
compiled module next to its source silently shadows every later edit of that source.  Here the
build lives in a cache directory named by a digest of the sources (and Python, platform, mypy),
so an edited policy or core never runs stale: its digest has no build, and the simulator falls
back to the pure-Python modules (or tells you to rebuild, with ``--core compiled``).  The idea is
that of ``torch.utils.cpp_extension.load``: compile once per source version, load from the cache.

Only the simulator uses the compiled modules: :func:`activate` installs an import hook before any
of them is imported, in the process that runs ``wanspec simulate`` (its sweep workers are forked
from it).  The real controller and worker always run the pure-Python cores.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence

from wanspec.errors import WanspecError

# the hot path of a simulation: the cores and what they construct per event, the discrete-event
# driver, the synthetic models and the link arithmetic
MODULES = (
    "wanspec.core.actions",
    "wanspec.core.calibration",
    "wanspec.core.chain",
    "wanspec.core.controller",
    "wanspec.core.estimates",
    "wanspec.core.metrics",
    "wanspec.core.policy",
    "wanspec.core.stopping",
    "wanspec.core.verify",
    "wanspec.core.worker",
    "wanspec.protocol.messages",
    "wanspec.simulate.engine",
    "wanspec.simulate.link",
    "wanspec.simulate.models",
    "wanspec.transport.latency",
)
# sources whose types the compiled code relies on (what the modules import from wanspec): a
# change to any of them must invalidate the build too
_TYPE_SOURCES = ("wanspec/errors.py", "wanspec/sampling.py", "wanspec/core/policy_defaults.py",
                 "wanspec/simulate/config.py")
GROUP = "wanspec_simcore"  # the shared library's module name: ``wanspec_simcore__mypyc``
CORES = ("auto", "pure", "compiled")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding ``wanspec/``


def _module_file(name: str) -> str:
    return name.replace(".", "/") + ".py"


def digest(root: Path = _PACKAGE_ROOT) -> str:
    """What a build is valid for: the compiled and type-providing sources, Python, platform, mypy."""
    h = hashlib.sha256()
    h.update(f"{sys.implementation.cache_tag} {platform.machine()} {sys.platform} "
             f"mypy={_mypy_version()}\n".encode())
    for rel in (*map(_module_file, MODULES), *_TYPE_SOURCES):
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _mypy_version() -> str:
    try:
        from importlib.metadata import version

        return version("mypy")
    except Exception:  # not installed: no build can exist or be made
        return "none"


def cache_root() -> Path:
    env = os.environ.get("WANSPEC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wanspec"


def build_dir(root: Path = _PACKAGE_ROOT) -> Path:
    return cache_root() / "compiled-core" / digest(root)


_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _expected_files(d: Path) -> dict[str, Path]:
    files = {name: d / (name.replace(".", "/") + _SUFFIX) for name in MODULES}
    files[f"{GROUP}__mypyc"] = d / f"{GROUP}__mypyc{_SUFFIX}"
    return files


def _complete(d: Path) -> bool:
    return all(f.is_file() for f in _expected_files(d).values())


def find_build(root: Path = _PACKAGE_ROOT) -> Path | None:
    """The cached build for the current sources, if complete."""
    d = build_dir(root)
    return d if _complete(d) else None


# ---- building --------------------------------------------------------------------------------
_SETUP = textwrap.dedent("""\
    from setuptools import setup
    from mypyc.build import mypycify

    setup(name="wanspec-simcore", script_args=["build_ext", "--inplace", "--parallel", "{jobs}"],
          ext_modules=mypycify({paths!r}, opt_level="{opt}", multi_file=True,
                               group_name="{group}"))
    """)


def build(*, root: Path = _PACKAGE_ROOT, log: Path | None = None, opt_level: str = "3",
          jobs: int | None = None) -> Path:
    """Compile :data:`MODULES` with mypyc into the cache (30-60 s on 2 cores); returns its path.

    The sources are copied to a scratch tree first, so nothing is ever written next to them.
    Raises WanspecError with the compiler's output if mypyc is missing or the build fails.
    """
    if _mypy_version() == "none":
        raise WanspecError("compiling the simulator core needs mypy (its mypyc compiler) and a C "
                           "compiler: pip install mypy")
    dest = build_dir(root)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WanspecError(f"cannot create the build cache {dest.parent}: "
                           f"{exc.strerror or exc} (WANSPEC_CACHE_DIR moves it)") from None
    jobs = jobs or max(1, min(os.cpu_count() or 1, 4))
    with tempfile.TemporaryDirectory(prefix="wanspec-simcore-") as tmp:
        work = Path(tmp)
        for src in (root / "wanspec").rglob("*.py"):  # .py only: no caches, assets or builds
            out = work / src.relative_to(root)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        paths = [_module_file(m) for m in MODULES]
        (work / "setup_simcore.py").write_text(
            _SETUP.format(jobs=jobs, paths=paths, opt=opt_level, group=GROUP))
        # mypy's view of third-party packages is not needed (their types become Any), and
        # analysing torch or transformers would take minutes
        (work / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n"
                                       "follow_imports = silent\n"
                                       "[mypy-torch.*,transformers.*,numpy.*,msgpack.*]\n"
                                       "follow_imports = skip\n")
        proc = subprocess.run([sys.executable, "setup_simcore.py"], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if log is not None:
            log.write_text(proc.stdout)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise WanspecError(f"compiling the simulator core failed (mypyc exit "
                               f"{proc.returncode}):\n{tail}")
        staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
        for name, f in _expected_files(staging).items():
            built = work / f.relative_to(staging)
            if not built.is_file():
                shutil.rmtree(staging, ignore_errors=True)
                raise WanspecError(f"compiling the simulator core produced no {built.name} "
                                   f"for {name}")
            f.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built, f)
    if dest.exists() and not _complete(dest):
        shutil.rmtree(dest, ignore_errors=True)  # what an interrupted copy left: replace it
    try:
        os.replace(staging, dest)
    except OSError:  # a concurrent build finished first: same sources, same result
        shutil.rmtree(staging, ignore_errors=True)
        if not dest.is_dir():
            raise
    _prune(dest.parent, keep=dest)
    return dest


KEEP_BUILDS = 8  # builds kept in the cache (one per source version: ~2 MB each)


def _prune(parent: Path, keep: Path) -> None:
    """Drop the least recently used builds beyond :data:`KEEP_BUILDS` (loading one touches it)."""
    builds = [d for d in parent.iterdir() if d.is_dir() and "." not in d.name and d != keep]
    builds.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for d in builds[KEEP_BUILDS - 1:]:
        shutil.rmtree(d, ignore_errors=True)


# ---- loading ---------------------------------------------------------------------------------
class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Resolves exactly the compiled modules (and their shared library) to the cached build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        f = self.files.get(fullname)
        if f is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(f))
        return importlib.util.spec_from_file_location(fullname, f, loader=loader)


@dataclass(frozen=True)
class CoreChoice:
    compiled: bool
    note: str  # for the report header: which core runs (and why not the compiled one)


def active() -> bool:
    return any(isinstance(f, _CompiledFinder) for f in sys.meta_path)


def activate(core: str = "auto", *, root: Path = _PACKAGE_ROOT) -> CoreChoice:
    """Make later imports of :data:`MODULES` load the compiled build (``auto``: if one exists).

    Must run before any of them is imported in this process; mixing compiled and pure classes
    would fail at the first type check, so ``auto`` stays pure-Python then.
    """
    if core not in CORES:
        raise WanspecError(f"unknown --core {core!r}; choose from {', '.join(CORES)}")
    if core == "pure":
        return CoreChoice(False, "pure-Python core")
    if active():
        return CoreChoice(True, "compiled core")
    d = find_build(root)
    if d is None:
        if core == "compiled":
            raise WanspecError("no compiled core for these sources: run wanspec simulate with "
                               "--build-core once (minutes), or --core auto")
        return CoreChoice(False, "pure-Python core (--build-core compiles it: ~4x faster)")
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:
        if core == "compiled":
            raise WanspecError(f"cannot switch to the compiled core: {loaded[0]} is already "
                               f"imported (pure-Python) in this process")
        return CoreChoice(False, f"pure-Python core ({loaded[0]} was imported before the "
                                  f"compiled build could load)")
    sys.meta_path.insert(0, _CompiledFinder(_expected_files(d)))
    try:
        os.utime(d)  # recently used: kept when later builds prune the cache
    except OSError:
        pass
    return CoreChoice(True, "compiled core")


def deactivate() -> None:
    """Remove the import hook (modules already imported stay as they are)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CompiledFinder)]


def is_compiled(module: ModuleType) -> bool:
    return str(getattr(module, "__file__", "")).endswith(_SUFFIX)
