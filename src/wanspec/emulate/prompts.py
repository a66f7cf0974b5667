"""Prompt sets: the shipped held-out Shakespeare prompts or a user's file."""

from __future__ import annotations

import json
from pathlib import Path

from wanspec.errors import WanspecError

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "heldout.jsonl"


def load_prompts(path: Path | None = None, limit: int | None = None) -> list[str]:
    """Read prompts: ``.jsonl`` (a JSON string or ``{"prompt": ...}`` per line) or plain text
    (one prompt per line, ``\\n`` escapes allowed)."""
    p = Path(path).expanduser() if path else DEFAULT_PROMPTS
    if p.is_dir():
        raise WanspecError(f"prompts file {p} is a directory")
    if not p.is_file():
        raise WanspecError(f"prompts file not found: {p}")
    prompts: list[str] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WanspecError(f"{p}:{i}: not JSON ({exc.msg})") from exc
            text = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(text, str):
                raise WanspecError(f"{p}:{i}: expected a string or an object with 'prompt'")
        else:
            text = line.replace("\\n", "\n")
        prompts.append(text)
    if not prompts:
        raise WanspecError(f"no prompts in {p}")
    if limit is not None:
        if limit < 1:
            raise WanspecError(f"--num-prompts must be >= 1, got {limit}")
        prompts = prompts[:limit]
    return prompts
