"""NIfTI outputs of inference: label masks and per-class probability maps, written atomically with nibabel.

Masks follow the shared geometry convention: an integer array ``(X, Y[, Z])`` (numpy, torch) or a
``MetaTensor``/tensor ``(1, X, Y[, Z])`` with a 4x4 RAS voxel->world affine in mm, on the input's own grid.
MONAI's ``SaveImage`` is not used because it writes in place (a killed run leaves a truncated file).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from pipeline.core.atomic import atomic_write

__all__ = ["as_affine", "label_array", "spatial_array", "write_mask_nifti", "write_probabilities_nifti"]

logger = logging.getLogger(__name__)

_NIFTI_SCANNER = 1  # NIfTI xform code "scanner anatomical"
_PROB_DTYPES = ("uint8", "float32")


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


def _set_geometry(img: nib.Nifti1Image, affine: np.ndarray) -> None:
    img.set_sform(affine, code=_NIFTI_SCANNER)
    img.set_qform(affine, code=_NIFTI_SCANNER)
    img.header.set_xyzt_units("mm", "sec")


def _save(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"NIfTI output path must end with .nii or .nii.gz, got {str(path)!r}")
    with atomic_write(path) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote %s", path)
    return path


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
    img = nib.Nifti1Image(arr, aff)
    img.set_data_dtype(arr.dtype)
    _set_geometry(img, aff)
    img.header["descrip"] = b"clinseg label mask"
    return _save(img, path)


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
        data = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
        img = nib.Nifti1Image(data, aff)
        img.set_data_dtype(np.uint8)
        img.header.set_slope_inter(1.0 / 255.0, 0.0)
    else:
        img = nib.Nifti1Image(arr, aff)
        img.set_data_dtype(np.float32)
    _set_geometry(img, aff)
    img.header["descrip"] = b"clinseg class probabilities (last axis = class)"
    return _save(img, path)
