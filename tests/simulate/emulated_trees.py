"""How many branch lanes an emulated deployment grows, for comparing it with the simulator.

The simulated worker announces draft trees ("branches" capability); an emulated one does once the
runtime's worker does.  Until then an emulated controller falls back to a plain chain, and the
simulator must be run without branches to be compared with it.
"""

from __future__ import annotations

from typing import Any

from wanspec.core.controller import ControllerConfig
from wanspec.runtime.worker import WorkerService


def emulated_branches(draft: Any) -> int:
    """The controller's default branches when the runtime's worker (drafting with ``draft``)
    announces draft trees, else 0."""
    if "branches" in WorkerService(draft).hello().capabilities:
        return ControllerConfig().branches
    return 0
