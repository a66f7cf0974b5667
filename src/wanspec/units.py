"""One grammar for the durations and bandwidths every flag and ``--sweep`` value takes.

Why one module: ``--bandwidth 100`` and ``--sweep bandwidth=100`` once meant different things
(bit/s and Mbit/s), and ``100MB/s`` was read as megabits.  Every command now reads these values
here, so a unit means the same wherever it is written.

* Durations: ``40ms``, ``0.04s``, ``250us`` (or ``µs``); a bare number is milliseconds, except
  for a flag whose name or help gives its unit in seconds (``--timeout``, ``--grace``,
  ``--*-timeout``: :func:`parse_duration_s`), where a bare number stays seconds.
* Bandwidths: ``100Mbit/s``, ``100Mbps``, ``100mbit``, ``1Gbit``, ``500kbit/s`` are bits per
  second; ``12.5MB/s``, ``12.5MBps``, ``12.5Mbyte/s`` are bytes per second (x 8); a bare number is
  Mbit/s; ``0`` (or ``unlimited``) means no limit.  Prefixes are decimal (k = 1e3 ... T = 1e12);
  only the single letter ``B``/``b`` is case-sensitive (bytes/bits).
* Values no link or latency target can have are refused: negative, above 100 s, below
  1 kbit/s or above 10 Tbit/s.
"""

from __future__ import annotations

import math
import re

from wanspec.errors import WanspecError

MAX_DURATION_MS = 100_000.0  # 100 s: beyond any round trip, jitter or latency target
MAX_TIMEOUT_S = 86_400.0  # 1 day: beyond any timeout or grace period that is not a typo
MIN_BANDWIDTH_BPS = 1e3  # 1 kbit/s: below it one message would take seconds
MAX_BANDWIDTH_BPS = 1e13  # 10 Tbit/s
DEFAULT_BANDWIDTH_UNIT_BPS = 1e6  # a bare number is Mbit/s

_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DURATION = re.compile(rf"\s*({_NUMBER})\s*(us|µs|ms|s)?\s*", re.IGNORECASE)
_DURATION_SCALE = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_RATE = re.compile(rf"\s*({_NUMBER})\s*([kmgt]?)\s*([a-z]*(?:/s(?:ec)?)?)\s*", re.IGNORECASE)
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_UNLIMITED = {"0", "inf", "unlimited", "none"}
DURATION_HINT = "use e.g. 40ms, 0.04s or 40 (a bare number is ms)"
DURATION_S_HINT = "use e.g. 5s, 500ms or 5 (a bare number is seconds)"
BANDWIDTH_HINT = ("use e.g. 100Mbit/s, 100Mbps, 12.5MB/s or 1Gbit (a bare number is Mbit/s; "
                  "0 = unlimited)")


def read_duration_ms(text: str, what: str = "duration", *, bare: str = "ms") -> float:
    """The number of milliseconds ``text`` spells (a bare number in unit ``bare``), sign
    included, unchecked for range."""
    m = _DURATION.fullmatch(str(text))
    if not m:
        hint = DURATION_HINT if bare == "ms" else DURATION_S_HINT
        raise WanspecError(f"invalid {what} {text!r}: {hint}")
    value = float(m.group(1)) * _DURATION_SCALE[(m.group(2) or bare).lower()]
    if not math.isfinite(value):
        raise WanspecError(f"invalid {what} {text!r}: not a finite duration")
    return value


def check_duration_ms(value: float, what: str = "duration",
                      max_ms: float = MAX_DURATION_MS) -> float:
    if not 0.0 <= value <= max_ms:
        raise WanspecError(f"{what} must be between 0 and {max_ms / 1000:g} s, got {value:g} ms")
    return value


def parse_duration_ms(text: str, what: str = "duration", *,
                      max_ms: float = MAX_DURATION_MS) -> float:
    """``"40ms"``, ``"0.04s"``, ``"250us"`` or a bare number of milliseconds -> milliseconds,
    refused (one line naming ``what``) if negative or above ``max_ms``."""
    return check_duration_ms(read_duration_ms(text, what), what, max_ms)


def parse_duration_s(text: str, what: str = "timeout", *, zero: bool = False,
                     max_s: float = MAX_TIMEOUT_S) -> float:
    """A timeout or grace period -> seconds: ``"5s"``, ``"500ms"``, or a bare number of
    *seconds* (these flags always took seconds).  Refused (one line naming ``what``) unless
    above 0 (or 0 itself where ``zero``, e.g. "never") and at most ``max_s``."""
    seconds = read_duration_ms(text, what, bare="s") / 1000.0
    low = ">= 0" if zero else "> 0"
    if not ((seconds >= 0 if zero else seconds > 0) and seconds <= max_s):
        raise WanspecError(f"{what} must be {low} and at most {max_s:g} s, got {text!r}")
    return seconds


def read_bandwidth_bps(text: str, what: str = "bandwidth") -> float:
    """The bits per second ``text`` spells (0 = unlimited), sign included, unchecked for range."""
    raw = str(text).strip()
    if raw.lower() in _UNLIMITED:
        return 0.0
    m = _RATE.fullmatch(raw)
    if not m:
        raise WanspecError(f"invalid {what} {text!r}: {BANDWIDTH_HINT}")
    number, prefix, unit = float(m.group(1)), m.group(2), m.group(3)
    base = re.sub(r"/s(ec)?$", "", unit, flags=re.IGNORECASE)
    if base in ("B", "Bps") or base.lower() in ("byte", "bytes"):
        bits = 8.0
    elif base.lower() in ("", "b", "bps", "bit", "bits"):
        bits = 1.0
    else:
        raise WanspecError(f"invalid {what} {text!r}: unknown unit {unit!r}; {BANDWIDTH_HINT}")
    if not prefix and not unit:
        return _finite(number * DEFAULT_BANDWIDTH_UNIT_BPS, what, text)
    return _finite(number * _PREFIX[prefix.lower()] * bits, what, text)


def _finite(value: float, what: str, text: str) -> float:
    if not math.isfinite(value):
        raise WanspecError(f"invalid {what} {text!r}: not a finite bandwidth")
    return value


def check_bandwidth_bps(value: float, what: str = "bandwidth") -> float:
    if value != 0 and not MIN_BANDWIDTH_BPS <= value <= MAX_BANDWIDTH_BPS:
        raise WanspecError(f"{what} must be 0 (unlimited) or between 1 kbit/s and 10 Tbit/s, "
                           f"got {format_bandwidth(value)}")
    return value


def parse_bandwidth_bps(text: str, what: str = "bandwidth") -> float:
    """``"100Mbit/s"``, ``"12.5MB/s"``, ``"1Gbit"``, a bare number of Mbit/s -> bits per second
    (0 = unlimited), refused (one line naming ``what``) outside 1 kbit/s .. 10 Tbit/s."""
    return check_bandwidth_bps(read_bandwidth_bps(text, what), what)


def format_bandwidth(bps: float) -> str:
    """``100 Mbit/s``, ``1.5 Gbit/s``, or ``unlimited`` for 0."""
    if bps == 0:
        return "unlimited"
    for scale, name in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if abs(bps) >= scale:
            return f"{bps / scale:.4g} {name}"
    return f"{bps:.4g} bit/s"


def describe_link(jitter_ms: float | None, bandwidth_bps: float | None, loss: float = 0.0) -> str:
    """What a report header says about the emulated link besides its RTT (None: left out, e.g.
    because a sweep varies it and the table shows it)."""
    parts = [] if jitter_ms is None else [f"jitter {jitter_ms:g} ms"]
    parts += [] if bandwidth_bps is None else [f"bandwidth {format_bandwidth(bandwidth_bps)}"]
    parts += [f"loss {loss:g}"] if loss else []
    return ", ".join(parts)
