"""NIfTI outputs of inference: label masks and per-class probability maps, via ``transforms.io.nifti_write``.

Masks follow the shared geometry convention: an integer array ``(X, Y[, Z])`` (numpy, torch) or a
``MetaTensor``/tensor ``(1, X, Y[, Z])`` with a 4x4 RAS voxel->world affine in mm, on the input's own grid.
MONAI's ``SaveImage`` is not used because it writes in place (a killed run leaves a truncated file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.core.arrays import as_affine, label_array
from transforms.io.nifti_write import write_nifti

__all__ = ["write_mask_nifti", "write_probabilities_nifti"]

_PROB_DTYPES = ("uint8", "float32")


def write_mask_nifti(mask, affine, path: str | os.PathLike) -> Path:
    """Write a label mask as NIfTI, atomically.

    Stored as uint8 when every label is < 256, else uint16; sform and qform both set to ``affine`` (code
    "scanner"; the sform keeps a sheared affine exactly up to float32, the qform is nibabel's closest rigid
    approximation).

    Args:
        mask: integer labels ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``; bool and integral floats are accepted.
        affine: 4x4 RAS voxel->world (mm); ``None`` to use ``mask.affine`` of a ``MetaTensor``.
        path: ``*.nii.gz`` or ``*.nii`` destination.

    Returns:
        ``path``.
    """
    arr = label_array(mask)
    aff = as_affine(affine, mask)
    return write_nifti(arr, aff, path, description="clinseg label mask")


def write_probabilities_nifti(probs, affine, path: str | os.PathLike, *, dtype: str = "uint8") -> Path:
    """Write per-class probabilities ``(C, X, Y[, Z])`` as one NIfTI with the classes on the last axis.

    NIfTI-1 has no float16 type, so the compact default is ``"uint8"``: ``round(p * 255)`` stored with
    ``scl_slope = 1/255``, read back as floats by ``nib.load(...).get_fdata()`` (error <= 0.002).
    ``"float32"`` stores the values exactly.

    Args:
        probs: float array/tensor ``(C, X, Y[, Z])``, values in [0, 1] for ``"uint8"``.
        affine: 4x4 RAS voxel->world (mm); ``None`` to use ``probs.affine`` of a ``MetaTensor``.
        path: ``*.nii.gz`` or ``*.nii`` destination.
        dtype: ``"uint8"`` (quantised) or ``"float32"``.

    Returns:
        ``path``.
    """
    if dtype not in _PROB_DTYPES:
        raise ValueError(f"dtype must be one of {_PROB_DTYPES}, got {dtype!r}")
    arr = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if arr.ndim not in (3, 4):
        raise ValueError(f"probs must be (C, X, Y) or (C, X, Y, Z), got shape {arr.shape}")
    arr = np.moveaxis(arr.astype(np.float32), 0, -1)
    if arr.ndim == 3:  # (X, Y, C) -> (X, Y, 1, C): NIfTI keeps dim 4 for channels
        arr = arr[:, :, None, :]
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs must be finite")
    aff = as_affine(affine, probs)
    if dtype == "uint8":
        if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
            raise ValueError(f"probs must lie in [0, 1] for dtype='uint8', got [{arr.min()}, {arr.max()}]")
        data, slope = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8), 1.0 / 255.0
    else:
        data, slope = arr, None
    description = "clinseg class probabilities (last axis = class)"
    return write_nifti(data, aff, path, slope=slope, description=description)
