"""Array and geometry helpers every wing shares: a mask without its channel, integer labels, a 4x4 affine.

The shared geometry convention: an array ``(X, Y[, Z])`` (numpy, torch) or a ``MetaTensor``/tensor
``(1, X, Y[, Z])`` with a 4x4 RAS voxel->world affine in mm, on the input's own grid.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["as_affine", "label_array", "slabs", "spatial_array"]


def spatial_array(x, name: str = "mask") -> np.ndarray:
    """Return ``x`` as a numpy array without its channel: ``(X, Y[, Z])``.

    Args:
        x: numpy array or tensor ``(X, Y[, Z])``, or a ``MetaTensor``/4D tensor ``(1, X, Y[, Z])``.
        name: argument name for error messages.

    Raises:
        ValueError: more than one channel, or not 2D/3D.
    """
    if isinstance(x, MetaTensor) or (isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 4):
        if x.shape[0] != 1:
            raise ValueError(f"{name} must have a single channel (1, X, Y[, Z]), got shape {tuple(x.shape)}")
        x = x[0]
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be (X, Y) or (X, Y, Z), got shape {arr.shape}")
    return arr


def as_affine(affine, reference=None, name: str = "affine") -> np.ndarray:
    """Return a 4x4 float64 voxel->world affine (mm, RAS).

    Args:
        affine: 4x4 (or 3x3 for 2D, embedded as x/y of a 4x4) array or tensor; ``None``: ``reference.affine``.
        reference: a ``MetaTensor`` whose affine is used when ``affine`` is ``None``.
        name: argument name for error messages.

    Raises:
        ValueError: no affine available, wrong shape, not finite, or singular.
    """
    if affine is None:
        if not isinstance(reference, MetaTensor):
            raise ValueError(f"{name} is required unless the mask is a MetaTensor")
        affine = reference.affine
    aff = affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else np.asarray(affine)
    aff = aff.astype(np.float64)
    if aff.shape == (3, 3):
        aff4 = np.eye(4)
        aff4[:2, :2], aff4[:2, 3] = aff[:2, :2], aff[:2, 2]
        aff = aff4
    if aff.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4 (or 3x3 for 2D), got shape {aff.shape}")
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{name} must be finite and invertible, got {aff.tolist()}")
    return aff


def label_array(mask, name: str = "mask") -> np.ndarray:
    """Return integer labels ``(X, Y[, Z])`` as uint8 (all labels < 256) or uint16, channel dropped.

    Accepts integer and bool arrays and float arrays holding whole numbers (e.g. MONAI ``AsDiscrete`` output).

    Raises:
        ValueError: non-integral or non-finite values, negative labels, or labels above 65535.
    """
    arr = spatial_array(mask, name)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer labels, got non-integral values of dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} labels must be >= 0, got minimum {arr.min()}")
    top = int(arr.max()) if arr.size else 0
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"{name} labels must fit uint16 (<= 65535), got maximum {top}")
    return arr.astype(np.uint8 if top < 256 else np.uint16)


def slabs(x, voxels: int = 1 << 22) -> Iterator[tuple[int, int, tuple[slice, ...]]]:
    """Yield ``(axis, start, index)`` slabs of ``x`` (numpy array or tensor) of about ``voxels`` voxels each, along
    its slowest-varying axis (the largest stride of the axes longer than 1).

    Each slab is then one block of memory, in C order as in the Fortran order of a NIfTI read by nibabel (last axis
    outermost), so a reduction copies at most a slab: torch copies a non-contiguous tensor whole before ``min``
    (315 MB for a 512x512x300 float CT).
    """
    strides = x.strides if isinstance(x, np.ndarray) else x.stride()
    axes = [a for a in range(x.ndim) if x.shape[a] > 1] or [0]
    axis = max(axes, key=lambda a: abs(strides[a]))
    step = max(1, voxels // max(1, int(np.prod(x.shape)) // max(1, x.shape[axis])))
    for start in range(0, x.shape[axis], step):
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + step)
        yield axis, start, tuple(index)
