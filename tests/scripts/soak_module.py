"""scripts/soak.py and its parts imported as modules (they are scripts, not part of the package):
``soak_common`` (the shipped pair, shared settings), ``soak_faults``, ``soak_fuzz``, ``soak``
(the command line)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name: str = "soak"):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # as when the script runs: its parts beside it
    return importlib.import_module(name)
