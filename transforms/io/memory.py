"""In-memory scans for ``LoadScan``/``LoadScand``: images that were loaded outside (MONAI Deploy, a notebook).

Accepted, per key, besides paths:

* a MONAI ``MetaTensor`` with its affine: ``(C, X, Y[, Z])`` channel-first, or ``(X, Y[, Z])`` (a channel is
  added); an affine in LPS (``meta["space"] == "LPS"``) is turned to RAS;
* a nibabel image (``Nifti1Image``, ``Nifti2Image`` ...): data and affine as a NIfTI file of it would load;
* a SimpleITK image (3D, one component): LPS origin/spacing/direction turned to a RAS affine;
* a tuple ``(array, affine)``: a numpy array or torch tensor ``(C, X, Y[, Z])`` or ``(X, Y[, Z])`` and its
  ``(4, 4)`` voxel -> RAS mm affine (a plain array without an affine is refused: its geometry is unknown).

The result is the MetaTensor a path load gives (same meta keys, ``filename_or_obj`` a placeholder naming the kind),
so orientation, resampling and restoring onto the input grid behave alike. The same checks apply: a degenerate
affine, non-finite voxels or non-integer labels raise a :class:`ScanLoadError` naming the key and the kind.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.utils import MetaKeys, SpaceKeys

from transforms.io.errors import ScanLoadError
from transforms.io.sitk import from_sitk
from transforms.io.nifti import check_affine, check_finite, label_values, nifti_array

__all__ = ["image_kind", "is_in_memory", "load_in_memory", "scan_tensor"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def image_kind(image: Any) -> str | None:
    """``"MetaTensor"``, ``"nibabel"``, ``"SimpleITK"`` or ``"array"`` (an ``(array, affine)`` tuple) for the
    in-memory kinds, ``None`` for anything else (paths included)."""
    if isinstance(image, MetaTensor):
        return "MetaTensor"
    if isinstance(image, nib.spatialimages.SpatialImage):
        return "nibabel"
    if isinstance(image, sitk.Image):
        return "SimpleITK"
    if isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], (np.ndarray, torch.Tensor)):
        return "array"
    return None


def is_in_memory(image: Any) -> bool:
    """Whether ``image`` is one of the in-memory kinds :func:`load_in_memory` takes."""
    return image_kind(image) is not None


def scan_tensor(
    array: np.ndarray, affine: np.ndarray, *, filename: str, channel_dim: float, extra: dict | None = None
) -> MetaTensor:
    """A channel-first ``array`` ``(C, X, Y[, Z])`` and its ``(4, 4)`` RAS affine as the loaders' MetaTensor (the
    meta keys ``LoadImaged`` + ``EnsureChannelFirstd`` give)."""
    meta = {
        **(extra or {}),
        MetaKeys.AFFINE: torch.as_tensor(affine, dtype=torch.float64),
        MetaKeys.ORIGINAL_AFFINE: np.array(affine, dtype=np.float64),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[1:], dtype=np.int64),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
        "filename_or_obj": filename,
    }
    return MetaTensor(torch.from_numpy(array), meta=meta)


def load_in_memory(
    image: Any,
    *,
    source: str = "",
    spatial_dims: int = 3,
    dtype: np.dtype | type | None = None,
    label: bool = False,
    channel_axis: int | None = None,
) -> MetaTensor:
    """An in-memory image (see the module docstring) as the MetaTensor ``(C, X, Y[, Z])`` a path load gives.

    Args:
        image: MetaTensor, nibabel image, SimpleITK image or ``(array, affine)``.
        source: what to call it in errors (e.g. ``"input 'image'"``); the kind is added.
        spatial_dims, dtype, label: as :func:`transforms.io.scan.load_scan`.
        channel_axis: for nibabel images only, as for 4D NIfTI files.

    Raises:
        ScanLoadError: not an accepted kind, a plain array without affine, a shape that does not fit
            ``spatial_dims``, a degenerate affine, non-finite voxels, non-integer labels.
    """
    kind = image_kind(image)
    name = f"{source} ({kind} image)" if source else f"in-memory {kind} image"
    if kind is None:
        raise ScanLoadError(_unknown(image, source))
    if channel_axis is not None and kind != "nibabel":
        raise ScanLoadError(
            f"{name}: channel_axis is for 4D nibabel images; give {kind} images channel-first."
        )
    extra: dict[str, Any] = {}
    if kind in ("nibabel", "SimpleITK"):
        array, affine = _nibabel(image) if kind == "nibabel" else _sitk(image, name)
        check_affine(affine, name)
        array = nifti_array(
            array, name, spatial_dims=spatial_dims, channel_axis=channel_axis, label=label, dtype=dtype
        )
        channel_dim: float | int = 0 if channel_axis is not None else float("nan")
        if channel_axis is None:
            array = array[None]
    else:
        array, affine, channel_dim = _channel_first(image, kind, spatial_dims, name)
        check_affine(affine, name)
        array = _values(array, name, label=label, dtype=dtype)
        if kind == "MetaTensor" and image.meta.get("modality"):
            extra["modality"] = str(image.meta["modality"])
    extra["spacing"] = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[:spatial_dims])
    array = np.array(array, copy=True)  # the transforms downstream must not write into the caller's image
    return scan_tensor(
        array, affine, filename=f"<in-memory {kind} image>", channel_dim=channel_dim, extra=extra
    )


def _unknown(image: Any, source: str) -> str:
    where = f"{source}: " if source else ""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return (
            f"{where}a plain {type(image).__name__} has no geometry; pass (array, affine) with its (4, 4) "
            "voxel -> RAS mm affine, or a MetaTensor, nibabel or SimpleITK image."
        )
    return (
        f"{where}cannot load a {type(image).__name__}; expected a path, a MetaTensor, a nibabel image, a "
        "SimpleITK image or an (array, affine) tuple."
    )


def _nibabel(image: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def _sitk(image: sitk.Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return from_sitk(image)
    except ValueError as err:
        raise ScanLoadError(f"{name}: {err}") from err


def _channel_first(
    image: Any, kind: str, spatial_dims: int, name: str
) -> tuple[np.ndarray, np.ndarray, float | int]:
    """``(array (C, X, Y[, Z]), affine (4, 4) RAS, original channel dim)`` of a MetaTensor or ``(array, affine)``."""
    if kind == "MetaTensor":
        array, affine = image.detach().cpu().numpy(), image.affine
        lps = str(image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)) == str(SpaceKeys.LPS)
    else:
        array, affine = image
        array = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        lps = False
    affine = np.asarray(
        affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64
    )
    if affine.shape not in ((3, 3), (4, 4)):
        raise ScanLoadError(
            f"{name}: the affine must be a (4, 4) voxel -> RAS mm matrix, got shape {affine.shape}."
        )
    affine = np.asarray(to_affine_nd(3, affine), dtype=np.float64)
    if lps:
        affine = _LPS_TO_RAS @ affine
    if array.ndim == spatial_dims:
        return array[None], affine, float("nan")
    if array.ndim == spatial_dims + 1:
        return array, affine, 0
    raise ScanLoadError(
        f"{name}: expected ({'X, Y' if spatial_dims == 2 else 'X, Y, Z'}) or a channel-first (C, ...) array for "
        f"spatial_dims={spatial_dims}, got shape {tuple(array.shape)}."
    )


def _values(array: np.ndarray, name: str, *, label: bool, dtype: np.dtype | type | None) -> np.ndarray:
    """Images checked for non-finite voxels and cast (float32 by default); labels kept as exact integers."""
    if label:
        return label_values(array.astype(array.dtype.newbyteorder("="), copy=False), name)
    check_finite(array, name)
    return array.astype(dtype or np.float32, copy=False)
