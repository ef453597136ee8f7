"""Planning rules: a dataset fingerprint -> grid, patch, network depth and normalisation (nnU-Net's heuristics,
restated for clinseg's registered networks, which pool by 2 on every axis).

- **Target spacing**: the median spacing per axis; when the coarsest axis is more than
  :data:`ANISOTROPY_RATIO` times the finest, that axis takes the 10th percentile of its spacings instead, so
  thick-slice scans are not interpolated to thin slices (nnU-Net's rule).
- **Patch**: the median shape after resampling, rounded up to a multiple of ``2 ** (levels - 1)``, then shrunk
  on the axis that is largest relative to the median shape until it holds at most ``max_patch_voxels``.
- **Depth**: as many 2x poolings as keep every axis of the deepest map at least :data:`MIN_FEATURE_MAP`
  voxels, between :data:`MIN_LEVELS` and :data:`MAX_LEVELS` levels.
- **Dimensionality** (``auto``): 3D unless the through-plane axis is so coarse (anisotropy above
  :data:`ANISOTROPY_2D`) or short that 3D patches cannot pool on it; then 2D on axial slices.
- **Normalisation by modality**: CT clips to the 0.5 / 99.5 percentiles of the foreground over the dataset
  and z-scores with the dataset's foreground mean and std (``ScaleIntensityRanged`` does both in one linear
  map); MR and every other modality is z-scored per image inside its foreground: the non-zero voxels when
  the images have a zero background (median non-zero share below :data:`NONZERO_MASK_BELOW`), the voxels
  above the image minimum when the background is another constant (median share at the minimum at least
  :data:`CONSTANT_BACKGROUND_ABOVE`: skull-stripped MR rescaled by another tool), else the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "is_anisotropic",
    "normalisation_for",
    "patch_and_levels",
    "prefers_2d",
    "resampled_shape",
    "target_spacing",
]

ANISOTROPY_RATIO = 3.0
ANISOTROPY_2D = 5.0
MIN_FEATURE_MAP = 4
MIN_LEVELS, MAX_LEVELS = 3, 5
NONZERO_MASK_BELOW = 0.9
CONSTANT_BACKGROUND_ABOVE = 0.1


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """Whether the coarsest axis is more than :data:`ANISOTROPY_RATIO` times the finest."""
    return max(spacing) > ANISOTROPY_RATIO * min(spacing)


def target_spacing(fingerprint: Mapping[str, Any]) -> list[float]:
    """The resampling target in mm, RAS order: median spacing, 10th percentile on a much coarser axis."""
    median = [float(s) for s in fingerprint["spacing"]["median"]]
    coarse = int(np.argmax(median))
    if is_anisotropic(median):
        median[coarse] = float(fingerprint["spacing"]["p10"][coarse])
    return [round(s, 4) for s in median]


def resampled_shape(fingerprint: Mapping[str, Any], spacing: Sequence[float]) -> list[int]:
    """The median case shape on the target ``spacing``, in voxels."""
    shape, median = fingerprint["shape"]["median"], fingerprint["spacing"]["median"]
    return [max(1, round(n * s / t)) for n, s, t in zip(shape, median, spacing)]


def _levels_for(patch: Sequence[int]) -> int:
    poolings = min(int(math.log2(max(n, 1) / MIN_FEATURE_MAP)) for n in patch)
    return max(MIN_LEVELS, min(MAX_LEVELS, poolings + 1))


def patch_and_levels(median_shape: Sequence[int], max_patch_voxels: int) -> tuple[list[int], int]:
    """Patch size (voxels per axis) and number of resolution levels for a median image shape.

    Args:
        median_shape: median case shape on the target grid, one entry per spatial axis (2 or 3).
        max_patch_voxels: the compute budget's largest patch.
    """
    levels = _levels_for(median_shape)
    step = 2 ** (levels - 1)
    patch = [max(step, math.ceil(n / step) * step) for n in median_shape]
    while math.prod(patch) > max_patch_voxels:
        shrinkable = [i for i in range(len(patch)) if patch[i] > step]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda i: (patch[i] / max(median_shape[i], 1), patch[i]))
        patch[axis] -= step
    return patch, _levels_for(patch)


def prefers_2d(spacing: Sequence[float], median_shape: Sequence[int]) -> bool:
    """``auto`` dimensionality: 2D when the through-plane (last) axis is far coarser or too short for 3D."""
    in_plane = min(spacing[:2])
    too_coarse = spacing[2] > ANISOTROPY_2D * in_plane
    too_short = median_shape[2] < 2 ** (MIN_LEVELS - 1) * MIN_FEATURE_MAP
    return too_coarse or too_short


def normalisation_for(
    key: str,
    modality: str,
    intensity: Mapping[str, float],
    nonzero_fraction: float,
    background_fraction: float = 0.0,
) -> dict[str, Any]:
    """The MONAI transform (a bundle config dict) that normalises channel ``key`` of this ``modality``."""
    if modality == "CT":
        low, high = intensity["p00_5"], intensity["p99_5"]
        mean, std = intensity["mean"], max(intensity["std"], 1e-6)
        return {
            "_target_": "ScaleIntensityRanged",
            "keys": [key],
            "a_min": round(low, 3),
            "a_max": round(high, 3),
            "b_min": round((low - mean) / std, 5),
            "b_max": round((high - mean) / std, 5),
            "clip": True,
        }
    if nonzero_fraction >= NONZERO_MASK_BELOW and background_fraction >= CONSTANT_BACKGROUND_ABOVE:
        return {"_target_": "transforms.intensity.foreground_zscore.ForegroundZScored", "keys": [key]}
    return {
        "_target_": "NormalizeIntensityd",
        "keys": [key],
        "nonzero": bool(nonzero_fraction < NONZERO_MASK_BELOW),
        "channel_wise": True,
    }
