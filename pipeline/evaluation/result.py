"""The outcome of an evaluation: per-case metric rows, their per-structure summary, where both went."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("dice", "iou", "hd95_mm", "msd_mm", "surface_dice")


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per label and metric: ``n`` finite values, ``mean``, ``std`` (sample, ddof=1), ``median``; nan skipped."""
    summary = []
    for label, name in sorted({(r["label"], r["name"]) for r in rows}):
        for metric in METRICS:
            values = np.array([r[metric] for r in rows if r["label"] == label], dtype=np.float64)
            values = values[np.isfinite(values)]
            n = int(values.size)
            summary.append({
                "label": label, "name": name, "metric": metric, "n": n,
                "mean": float(values.mean()) if n else math.nan,
                "std": float(values.std(ddof=1)) if n > 1 else math.nan,
                "median": float(np.median(values)) if n else math.nan,
            })  # fmt: skip
    return summary


@dataclass
class EvaluationResult:
    """Per-case rows, per-label summary, where they were written and the MLflow run that holds them."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out_dir: Path
    run_id: str | None = None
    tracking_uri: str | None = None

    def mean(self, metric: str = "dice", name: str | None = None) -> float:
        """Mean of a metric over cases for one structure, or over structures when ``name`` is None."""
        means = [
            s["mean"] for s in self.summary if s["metric"] == metric and (name is None or s["name"] == name)
        ]
        finite = [m for m in means if math.isfinite(m)]
        return float(np.mean(finite)) if finite else math.nan

    def summary_line(self) -> str:
        cases = len({r["case"] for r in self.rows})
        per_label = ", ".join(f"{s['name']} {s['mean']:.4f}" for s in self.summary if s["metric"] == "dice")
        run = f"; MLflow run {self.run_id} in {self.tracking_uri}" if self.run_id else ""
        return f"{cases} cases, mean Dice {self.mean():.4f} ({per_label}); tables in {self.out_dir}{run}"
