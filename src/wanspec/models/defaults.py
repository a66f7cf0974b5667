"""The default model pair shipped inside the package (trained by scripts/train_default_pair.py)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_TARGET = ASSETS / "target"
DEFAULT_DRAFT = ASSETS / "draft"


def target_path(given: str | Path | None) -> Path:
    return Path(given).expanduser() if given else DEFAULT_TARGET


def draft_path(given: str | Path | None) -> Path:
    return Path(given).expanduser() if given else DEFAULT_DRAFT
