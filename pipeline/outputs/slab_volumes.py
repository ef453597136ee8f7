"""Volume statistics of a large mask computed slab by slab, pooled exactly."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from monai.data import MetaTensor

from pipeline.outputs.volumetry import structure_volumes

__all__ = ["volumes_by_slab"]

SLAB = 8  # slices per slab: a 512x512 slab's float64 working copies stay near 17 MB each


def volumes_by_slab(
    seg: MetaTensor, image: MetaTensor, affine: np.ndarray, labels: Mapping[int, str]
) -> list[dict]:
    """:func:`structure_volumes` of ``seg`` ``(1, X, Y, Z)`` over ``image`` ``(1, X, Y, Z)`` in slabs of ``SLAB``
    slices, pooled exactly (count, mean, variance, min, max), so the float64 working copies stay small for
    512x512x300 CTs."""
    if seg.ndim != 4 or seg.shape[-1] <= SLAB:
        return structure_volumes(seg, image, affine, labels)
    parts = [
        structure_volumes(seg[..., z : z + SLAB], image[..., z : z + SLAB], affine, labels)
        for z in range(0, seg.shape[-1], SLAB)
    ]
    rows = []
    for slabs in zip(*parts, strict=True):
        n = sum(r["voxels"] for r in slabs)
        row = {**slabs[0], "voxels": n, "volume_ml": sum(r["volume_ml"] for r in slabs)}
        if n and any(r["mean_intensity"] is not None for r in slabs):
            filled = [r for r in slabs if r["voxels"]]
            mean = sum(r["voxels"] * r["mean_intensity"] for r in filled) / n
            second = sum(
                r["voxels"] * (r["std_intensity"] ** 2 + (r["mean_intensity"] - mean) ** 2) for r in filled
            )
            row["mean_intensity"], row["std_intensity"] = mean, float(np.sqrt(second / n))
            row["min_intensity"] = min(r["min_intensity"] for r in filled)
            row["max_intensity"] = max(r["max_intensity"] for r in filled)
        rows.append(row)
    return rows
