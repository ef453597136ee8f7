"""Structure volumes (mL) and intensity statistics (HU for CT) per label, and their CSV table."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_write_text
from pipeline.core.arrays import as_affine, label_array, spatial_array

__all__ = ["VOLUME_COLUMNS", "structure_volumes", "voxel_volume_ml", "write_volumes_csv"]

logger = logging.getLogger(__name__)

VOLUME_COLUMNS = (
    "case",
    "label",
    "name",
    "voxels",
    "volume_ml",
    "mean_intensity",
    "std_intensity",
    "min_intensity",
    "max_intensity",
)
_DIGITS = (0, 0, 0, 0, 4, 3, 3, 3, 3)  # decimals per column for floats
_OPTIONAL = ("min_intensity", "max_intensity")  # absent from volumes.json written before they existed


def voxel_volume_ml(affine_or_spacing, reference=None) -> float:
    """Volume of one voxel in mL: ``|det(affine[:3, :3])| / 1000`` or ``prod(spacing) / 1000``.

    Args:
        affine_or_spacing: 4x4 (3x3 for 2D) voxel->world affine in mm, or a sequence of voxel sizes in mm
            (2D: the in-plane area, so the result is mm^2 / 1000); ``None`` takes ``reference.affine``.
        reference: a ``MetaTensor`` used when ``affine_or_spacing`` is ``None``.
    """
    if affine_or_spacing is not None and np.ndim(affine_or_spacing) == 1:
        spacing = np.asarray(affine_or_spacing, dtype=np.float64)
        if spacing.size not in (2, 3) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"spacing must be 2 or 3 positive voxel sizes in mm, got {spacing.tolist()}")
        return float(np.prod(spacing)) / 1000.0
    aff = as_affine(affine_or_spacing, reference, "affine_or_spacing")
    return float(abs(np.linalg.det(aff[:3, :3]))) / 1000.0


def structure_volumes(
    mask, image, affine_or_spacing, labels: Mapping[int, str]
) -> list[dict[str, int | float | str | None]]:
    """One row per declared label (background excluded, absent labels with 0 voxels).

    Args:
        mask: integer labels ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``.
        image: intensities on the same grid (HU for CT), or ``None`` for no intensity statistics.
        affine_or_spacing: 4x4 affine (mm), voxel sizes (mm), or ``None`` to use the mask's MetaTensor affine.
        labels: label id -> name.

    Returns:
        Rows ``{"label", "name", "voxels", "volume_ml", "mean_intensity", "std_intensity", "min_intensity",
        "max_intensity"}`` in ascending label order; ``volume_ml = voxels * voxel volume``; mean/std (population,
        ddof=0), min and max of ``image`` inside the label, ``None`` when there is no image or no voxel.
    """
    arr = label_array(mask)
    img = None
    if image is not None:
        img = spatial_array(image, "image").astype(np.float64)
        if img.shape != arr.shape:
            raise ValueError(f"image shape {img.shape} must equal mask shape {arr.shape}")
    bad = [lid for lid in labels if int(lid) != lid or lid <= 0]
    if bad:
        raise ValueError(f"labels keys must be positive integer ids (0 is background), got {bad}")
    voxel_ml = voxel_volume_ml(affine_or_spacing, mask)

    flat = arr.ravel()
    size = max([int(flat.max(initial=0)), *labels]) + 1
    counts = np.bincount(flat, minlength=size)
    sums = sq = lows = highs = None
    shift = 0.0
    if img is not None:
        values = img.ravel()
        lows, highs = np.full(size, np.inf), np.full(size, -np.inf)
        np.minimum.at(lows, flat, values)
        np.maximum.at(highs, flat, values)
        shift = float(values.mean()) if values.size else 0.0  # centring keeps the one-pass variance accurate
        values = values - shift
        sums = np.bincount(flat, weights=values, minlength=size)
        sq = np.bincount(flat, weights=values * values, minlength=size)
    rows = []
    for lid in sorted(labels):
        n = int(counts[lid])
        mean = std = low = high = None
        if sums is not None and n:
            centred_mean = sums[lid] / n
            mean = float(centred_mean + shift)
            std = float(np.sqrt(max(sq[lid] / n - centred_mean**2, 0.0)))
            low, high = float(lows[lid]), float(highs[lid])
        rows.append(
            {
                "label": int(lid),
                "name": str(labels[lid]),
                "voxels": n,
                "volume_ml": n * voxel_ml,
                "mean_intensity": mean,
                "std_intensity": std,
                "min_intensity": low,
                "max_intensity": high,
            }
        )
    undeclared = sorted(set(np.flatnonzero(counts).tolist()) - set(labels) - {0})
    if undeclared:
        logger.warning("mask holds labels %s that are not declared; they are not reported", undeclared)
    return rows


def _cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_volumes_csv(rows: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write volume rows (each with a ``case`` key added) as CSV, atomically.

    Columns: ``case,label,name,voxels,volume_ml,mean_intensity,std_intensity,min_intensity,max_intensity``;
    ``volume_ml`` with 4 decimals (0.1 uL), intensities with 3; empty cells for ``None`` (and for min/max in rows
    of a ``volumes.json`` written before they were computed).

    Args:
        rows: dicts from :func:`structure_volumes` plus ``"case"``.
        path: destination ``.csv``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(VOLUME_COLUMNS)
    for idx, row in enumerate(rows):
        missing = [c for c in VOLUME_COLUMNS if c not in row and c not in _OPTIONAL]
        if missing:
            raise ValueError(f"rows[{idx}] lacks columns {missing}; expected {list(VOLUME_COLUMNS)}")
        writer.writerow([_cell(row.get(c), d) for c, d in zip(VOLUME_COLUMNS, _DIGITS, strict=True)])
    return atomic_write_text(path, buf.getvalue())
