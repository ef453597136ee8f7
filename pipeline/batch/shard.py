"""Scale-out: split a batch's sorted cases between processes or machines that fill one output folder.

Shard ``i`` of ``n`` (``0 <= i < n``) takes the cases at positions ``i, i + n, i + 2n, ...`` of the sorted
case list, so every case belongs to exactly one shard and neighbouring (often similar-sized) cases are spread
out. Each shard writes only its own case folders and its own batch files ``report.shard-i-of-n.json``,
``summary.shard-i-of-n.csv`` and ``volumes.shard-i-of-n.csv``; :func:`pipeline.batch.shard_merge.merge_shards` (or
``clinseg predict ... --merge-shards``) then writes the folder-wide ``report.json``, ``summary.csv`` and
``volumes.csv``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Shard", "shard_from_env"]

T = TypeVar("T")
_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``Shard(0, 1)`` is the whole batch."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must satisfy 0 <= index < count, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based index), e.g. ``"0/4"``."""
        match = _PATTERN.match(text)
        if not match:
            raise ValueError(f"--shard must be 'i/n' with 0 <= i < n (e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def suffix(self) -> str:
        """``""`` for the whole batch, else ``".shard-i-of-n"`` (inserted before a batch file's extension)."""
        return "" if self.whole else f".shard-{self.index}-of-{self.count}"

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's items of an already sorted sequence."""
        return list(items[self.index :: self.count])


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of a ``torchrun`` worker from ``RANK`` / ``WORLD_SIZE`` (whole batch when they are unset)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Shard()
    try:
        return Shard(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE from the environment do not form a shard: {e}") from e


def torchrun_device(device: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``cuda:<LOCAL_RANK>`` for ``device="cuda"`` under torchrun (one GPU per worker), else ``device``."""
    env = os.environ if environ is None else environ
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device
