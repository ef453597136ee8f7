"""What QC measures of one case, the same way for the training cases (the reference) and for each predicted case.

Image features are computed per channel on the image as read, on its own grid, in the scan's own units:
whole-image percentiles, percentiles inside a mask (the label for training cases, the prediction otherwise),
and scale-free shape measures that survive an arbitrary MR intensity scale:

* ``roughness``: median absolute difference of neighbouring voxels over the intensity range (noise);
* ``fg_spread``: the mask's 1-99 % range over the image's (a bias field widens it);
* ``fg_position``: where the mask's median lies in the image's range (contrast; a wrong modality moves it).

Geometry is given in RAS axis order (spacing, field of view), so it compares across scan orientations.
Structure features (per label value): volume in mL, connected components, share of voxels on the
field-of-view border.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

__all__ = ["MAX_SAMPLES", "geometry_features", "image_features", "structure_features"]

MAX_SAMPLES = 2_000_000
"""Voxels (evenly strided) used for a channel's percentiles: enough for 0.1 % precision, bounded for big CTs."""
MIN_COMPONENT_VOXELS = 5
"""Components smaller than this are not counted (single-voxel speckle says nothing about the structure)."""


def _array(image: Any) -> np.ndarray:
    return np.asarray(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=np.float32)


def _affine(image: Any) -> np.ndarray:
    affine = getattr(image, "affine", None)
    return np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine), dtype=np.float64)


def geometry_features(image: Any) -> dict[str, Any]:
    """Orientation codes (``"RAS"``), spacing and field of view (mm) in RAS axis order of a ``(C, X, Y[, Z])``
    MetaTensor."""
    affine = _affine(image)
    dims = image.ndim - 1
    affine3 = np.eye(4)
    affine3[:dims, :dims] = affine[:dims, :dims]
    affine3[:dims, 3] = affine[:dims, 3]
    codes = "".join(nib.aff2axcodes(affine3))[:dims]
    spacing = np.sqrt((affine3[:dims, :dims] ** 2).sum(axis=0))
    world_axis = [int(a) for a in nib.io_orientation(affine3)[:dims, 0]]
    shape = np.asarray(image.shape[1:], dtype=float)
    spacing_ras, fov_ras = [0.0] * dims, [0.0] * dims
    for voxel_axis, axis in enumerate(world_axis):
        spacing_ras[axis] = float(spacing[voxel_axis])
        fov_ras[axis] = float(spacing[voxel_axis] * shape[voxel_axis])
    return {"orientation": codes, "spacing": spacing_ras, "fov_mm": fov_ras}


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, values.size // MAX_SAMPLES)
    return values.ravel()[::step]


def _neighbour_steps(channel: np.ndarray) -> np.ndarray:
    """``_sample(|np.diff(channel, axis=0)|)`` (the same values) without the full-volume temporary: only the
    sampled voxels and their next neighbours along the first axis are read. ``channel``: ``(X, Y[, Z])``."""
    flat = np.ascontiguousarray(channel).reshape(-1)
    stride = int(np.prod(channel.shape[1:]))
    count = flat.size - stride
    index = np.arange(0, max(count, 0), max(1, count // MAX_SAMPLES))
    return np.abs(flat[index + stride].astype(np.float64) - flat[index])


def image_features(image: Any, mask: np.ndarray | None) -> list[dict[str, float | None]]:
    """Per channel of ``image`` ``(C, X, Y[, Z])``: percentiles ``p01``/``p50``/``p99`` of the image and
    ``fg_p01``/``fg_p50``/``fg_p99`` inside ``mask`` ``(X, Y[, Z])`` bool (``None`` when the mask is absent,
    empty or on another grid), ``roughness``, ``fg_spread``, ``fg_position``."""
    array = _array(image)
    usable = mask is not None and mask.shape == array.shape[1:] and bool(mask.any())
    out = []
    for channel in array:
        p01, p50, p99 = (float(v) for v in np.percentile(_sample(channel), (1, 50, 99)))
        span = max(p99 - p01, 1e-6)
        features: dict[str, float | None] = {
            "p01": p01, "p50": p50, "p99": p99, "roughness": float(np.median(_neighbour_steps(channel))) / span,
            "fg_p01": None, "fg_p50": None, "fg_p99": None, "fg_spread": None, "fg_position": None,
        }  # fmt: skip
        if usable:
            f01, f50, f99 = (float(v) for v in np.percentile(_sample(channel[mask]), (1, 50, 99)))
            features.update(
                fg_p01=f01, fg_p50=f50, fg_p99=f99, fg_spread=(f99 - f01) / span, fg_position=(f50 - p01) / span
            )
        out.append(features)
    return out


def structure_features(labels: np.ndarray, values: Iterable[int], voxel_ml: float) -> dict[int, dict[str, float]]:
    """Per label value: ``volume_ml``, ``components`` (26-connected, at least :data:`MIN_COMPONENT_VOXELS`
    voxels) and ``border_fraction`` (share of its voxels on the outermost planes) of a label map ``(X, Y[, Z])``."""
    labels = np.asarray(labels)
    border = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        index = [slice(None)] * labels.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    connectivity = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    out = {}
    for value in values:
        mask = labels == value
        voxels = int(mask.sum())
        components = 0
        if voxels:
            found, n = ndimage.label(mask, structure=connectivity)
            sizes = np.bincount(found.ravel())[1:]
            components = int((sizes >= MIN_COMPONENT_VOXELS).sum()) if n else 0
        out[int(value)] = {
            "volume_ml": voxels * voxel_ml,
            "components": float(components),
            "border_fraction": float((mask & border).sum() / voxels) if voxels else 0.0,
        }
    return out
