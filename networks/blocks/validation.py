"""Up-front argument checks shared by the networks: messages name the argument, the rule and the bad value."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_channels",
    "check_choice",
    "check_kernel_size",
    "check_positive_int",
    "check_probability",
    "check_spatial_dims",
]


def check_spatial_dims(owner: str, value: Any) -> int:
    """``spatial_dims`` must be 2 or 3."""
    if isinstance(value, bool) or value not in (2, 3):
        raise ValueError(f"{owner}: spatial_dims must be 2 or 3, got {value!r}.")
    return int(value)


def check_positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` must be an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}.")
    return value


def check_channels(owner: str, name: str, value: Any, min_len: int = 2) -> tuple[int, ...]:
    """A sequence of at least ``min_len`` positive integers (one width per level)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) < min_len:
        raise ValueError(
            f"{owner}: {name} must be a sequence of at least {min_len} positive integers, got {value!r}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ValueError(f"{owner}: every entry of {name} must be a positive integer, got {value!r}.")
    return tuple(int(v) for v in value)


def check_probability(owner: str, name: str, value: Any) -> float:
    """A dropout probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_kernel_size(owner: str, name: str, value: Any) -> int:
    """An odd positive integer kernel size (so 'same' padding is ``k // 2``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{owner}: {name} must be an odd positive integer, got {value!r}.")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices``; a near miss gets a "did you mean" hint."""
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{owner}: {name} must be one of {tuple(choices)!r}, got {value!r}.{hint}")
