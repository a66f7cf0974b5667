"""Parsing of human-friendly CLI values (durations, rates) with one-line errors."""

from __future__ import annotations

import re

from wanspec.errors import WanspecError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b)?(/s)?\s*$", re.IGNORECASE)


def parse_duration_ms(text: str, what: str = "duration") -> float:
    """``"40ms"``, ``"0.04s"``, ``"250us"`` or a bare number of milliseconds -> milliseconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise WanspecError(f"invalid {what} {text!r}: use e.g. 40ms, 0.04s or 40")
    value, unit = float(m.group(1)), (m.group(2) or "ms")
    scale = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}[unit]
    return value * scale


def parse_rate_bps(text: str, what: str = "bandwidth") -> float:
    """``"100mbit"``, ``"1gbit"``, ``"500kbit"`` -> bits per second (0 or 'inf' = unlimited)."""
    if str(text).strip().lower() in {"0", "inf", "unlimited", "none"}:
        return 0.0
    m = _RATE.match(str(text))
    if not m:
        raise WanspecError(f"invalid {what} {text!r}: use e.g. 100mbit, 1gbit or 0 for unlimited")
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    return float(m.group(1)) * scale
