"""Display windows of previews: a CT window as given, or the percentiles of the body's intensities (MR and
others), computed slab by slab so a large volume is never copied."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.core.arrays import slabs as array_slabs
from pipeline.core.arrays import spatial_array

__all__ = ["HISTOGRAM_BINS", "SLAB_VOXELS", "display_range", "percentile_window", "preview_window", "slabs"]

SLAB_VOXELS = 1 << 20
"""Voxels per slab when scanning a mask (4 slices of 512x512): temporaries stay near 20 MB."""


def slabs(arr: np.ndarray) -> Iterator[tuple[int, int, tuple[slice, ...]]]:
    """Yield ``(axis, start, index)`` slabs of :data:`SLAB_VOXELS` voxels of ``arr`` along its slowest-varying
    (largest stride) axis (:func:`pipeline.core.arrays.slabs`)."""
    return array_slabs(arr, SLAB_VOXELS)


HISTOGRAM_BINS = 1 << 14
"""Bins of the intensity histogram behind :func:`percentile_window`: 1/16384 of the range, far below a grey level."""


def percentile_window(
    image, lower: float = 0.5, upper: float = 99.5, bins: int = HISTOGRAM_BINS
) -> tuple[float, float]:
    """``(level, width)`` spanning the ``lower``-``upper`` percentiles of the non-zero voxels of ``image``.

    The display window for MR and other non-CT inputs: zero is the background of most MR volumes (outside the
    head, masked or padded), so the window follows the body's intensities. Computed slab by slab from a
    histogram (two passes, no copy of the volume), exact to a bin of the range; non-finite voxels are ignored,
    and a volume that is all zero gets the percentiles of all its voxels.

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``, any real dtype.
    """
    arr = spatial_array(image, "image")
    for body in (True, False):
        lo, hi, count = np.inf, -np.inf, 0
        for _, _, index in slabs(arr):
            values = _finite(arr[index], body)
            if values.size:
                lo, hi, count = (
                    min(lo, float(values.min())),
                    max(hi, float(values.max())),
                    count + values.size,
                )
        if count:
            break
    else:
        return 0.5, 1.0
    if not hi > lo:
        return lo + 0.5, 1.0  # a constant image shows black, as its value is the bottom of the window
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, np.int64)
    for _, _, index in slabs(arr):
        counts += np.histogram(_finite(arr[index], body), bins=edges)[0]
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    vmin, vmax = np.interp([lower / 100 * count, upper / 100 * count], cumulative, edges)
    vmax = vmax if vmax > vmin else vmin + (hi - lo) / bins
    return float((vmin + vmax) / 2), float(vmax - vmin)


def _finite(slab: np.ndarray, non_zero: bool) -> np.ndarray:
    """The finite (and, when ``non_zero``, non-zero) values of ``slab`` as float64, 1D."""
    keep = np.isfinite(slab) & (slab != 0) if non_zero else np.isfinite(slab)
    return slab[keep].astype(np.float64, copy=False)


def preview_window(modality: str | None, window: tuple[float, float] | None) -> tuple[float, float] | None:
    """The window to render an input of ``modality`` with: ``window`` (a bundle's CT window, HU) for CT and for an
    unknown modality (``None`` or ``""``), ``None`` (:func:`percentile_window`) for MR and any other modality."""
    return window if str(modality or "").upper() in ("", "CT") else None


def display_range(image, window: tuple[float, float] | None) -> tuple[float, float]:
    """``(vmin, vmax)`` of ``window`` ``(level, width)``, default :func:`percentile_window` of ``image``."""
    if window is None:
        window = percentile_window(image)
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"window must be (level, width) with width > 0, got {window}")
    return level - width / 2, level + width / 2
