"""Render rows of run facts as an aligned text table, CSV, Markdown or JSON, narrow enough for a terminal."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("table", "csv", "markdown", "json")
MAX_CELL = 40  # characters of a table or Markdown cell; longer values end in "…" (CSV and JSON keep them whole)


def select_columns(columns: list[str], patterns: list[str]) -> list[str]:
    """The ``columns`` matching ``patterns`` (names or shell-style globs such as ``params.*``; a bare name also
    matches ``params.<name>``), in pattern order, each once."""
    chosen: list[str] = []
    for pattern in patterns:
        found = [c for c in columns if fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, f"params.{pattern}")]
        chosen += [c for c in found if c not in chosen]
    return chosen


@dataclass
class ComparisonTable:
    """Rows of run facts with fixed column order; render with :meth:`format`."""

    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def format(self, fmt: str = "table") -> str:
        """Render as ``table`` (aligned text), ``csv``, ``markdown`` or ``json``."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if fmt == "json":
            return json.dumps([{c: json_value(r.get(c)) for c in self.columns} for r in self.rows], indent=2)
        if fmt == "csv":
            cells = [[_cell(r.get(c)) for c in self.columns] for r in self.rows]
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerows([self.columns, *cells])
            return buffer.getvalue()
        cells = [[_short(_cell(r.get(c))) for c in self.columns] for r in self.rows]
        if fmt == "markdown":
            lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
            return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
        widths = [
            max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
            for i, c in enumerate(self.columns)
        ]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _short(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
