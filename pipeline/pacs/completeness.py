"""What the received instances of a series say about its size: the sender's instance count in the headers
and gaps in the slice positions.

Neither proves a series complete: a count that is absent, or contiguous slices, only mean nothing is known to be
missing (``clinseg serve`` then marks its result ``provisional``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

__all__ = ["COUNT_TAGS", "sender_count", "slice_gaps"]

# header elements giving the instance count of the series (the first one present wins)
COUNT_TAGS = ("NumberOfSeriesRelatedInstances", "ImagesInAcquisition")
_GAP = 1.5  # a step this many times the series' usual spacing means slices are missing


def sender_count(ds: Dataset) -> tuple[int, str] | None:
    """``(count, "the sender's <keyword>")`` from the first of :data:`COUNT_TAGS` that ``ds`` holds (> 0)."""
    for keyword in COUNT_TAGS:
        value = ds.get(keyword)
        if value not in (None, "") and int(value) > 0:
            return int(value), f"the sender's {keyword}"
    return None


def _offset(ds: Dataset) -> float | None:
    """Position of a slice along its normal, mm (``None``: no single-frame geometry)."""
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is None or orientation is None or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return None
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return float(np.dot(np.cross(row, col), np.asarray(position, float)))


def slice_gaps(folder: Path, names: Iterable[str]) -> str | None:
    """Why the slices in ``folder/names`` are known to have gaps, e.g. ``"3 slice positions missing
    (between 12.0 and 20.0 mm)"``; ``None`` when none is seen (or the instances carry no slice geometry)."""
    offsets = []
    for name in sorted(names):
        offset = _offset(pydicom.dcmread(folder / name, stop_before_pixels=True))
        if offset is None:
            return None
        offsets.append(offset)
    ordered = np.unique(np.round(offsets, 3))
    steps = np.diff(ordered)
    if len(steps) < 2:
        return None
    values, counts = np.unique(np.round(steps, 2), return_counts=True)
    spacing = float(values[np.argmax(counts)])  # the most common step (ties: the smallest)
    gaps = [(a, b) for a, b, step in zip(ordered[:-1], ordered[1:], steps) if step > _GAP * spacing]
    if not gaps:
        return None
    missing = sum(round((b - a) / spacing) - 1 for a, b in gaps)
    where = ", ".join(f"{a:.1f} to {b:.1f} mm" for a, b in gaps[:3]) + (" ..." if len(gaps) > 3 else "")
    return f"{missing} slice positions missing within the received range (between {where})"
