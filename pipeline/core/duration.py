"""Durations written as people write them: ``90s``, ``30m``, ``1.5h`` (a bare number is seconds)."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a positive number with an optional unit ``s``, ``m`` or ``h`` (``"1.5h"`` -> 5400.0)."""
    match = _PATTERN.fullmatch(str(text).strip().lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 30m or 1.5h)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1.5h"``, ``1800`` -> ``"30m"``, ``90`` -> ``"90s"``: the largest unit that reads cleanly."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and (seconds / size * 10) % 1 == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
