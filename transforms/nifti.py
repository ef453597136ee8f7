"""NIfTI loading with nibabel: affine as nibabel chooses it (sform, else qform), float images, exact labels."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from transforms.io_errors import ScanLoadError

__all__ = ["is_nifti_path", "load_nifti"]


def is_nifti_path(path: Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names."""
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz"))


def _read_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Voxel data as nibabel's ``np.asarray(img.dataobj)`` gives it (scaled), decompressing ``.gz`` in one call.

    One-shot ``zlib.decompress`` of the whole file is about twice as fast as nibabel's streamed gzip reader;
    scaled data and files it cannot handle (multi-member gzip, truncated data) go through nibabel.
    """
    proxy = img.dataobj
    dtype = img.get_data_dtype()
    offset = int(proxy.offset)
    nbytes = int(np.prod(img.shape, dtype=np.int64)) * dtype.itemsize
    if float(proxy.slope) != 1.0 or float(proxy.inter) != 0.0:
        return np.asarray(proxy)
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = zlib.decompress(raw, 31)
        except zlib.error:
            return np.asarray(proxy)
    if len(raw) < offset + nbytes:
        return np.asarray(proxy)
    return np.ndarray(img.shape, dtype=dtype, buffer=raw, offset=offset, order="F")


def _label_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels unchanged; integer-valued float storage cast to int32; anything else raises."""
    if data.dtype.kind in "iub":
        return data
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ScanLoadError(f"{path}: label image must hold integer values, found non-integer or NaN voxels.")
    return data.astype(np.int32)


def load_nifti(
    path: Path,
    *,
    spatial_dims: int = 3,
    channel_axis: int | None = None,
    label: bool = False,
    dtype: np.dtype | type | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load a NIfTI image.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        spatial_dims: 3 -> ``(X, Y, Z)`` (a 2D file becomes ``(X, Y, 1)``); 2 -> ``(X, Y)`` from ``(X, Y)`` or
            ``(X, Y, 1)`` files.
        channel_axis: axis holding channels in a 4D file; the channels are moved first -> ``(C, X, Y, Z)``.
            Without it 4D files are refused.
        label: keep integer values exact (stored integer dtype, or int32 for integer-valued float storage).
        dtype: output dtype for images (default float32); ignored for labels.

    Returns:
        ``(array, affine_ras (4, 4), meta)`` with array ``(X, Y[, Z])`` or ``(C, X, Y[, Z])`` when
        ``channel_axis`` is given.

    Raises:
        ScanLoadError: unreadable file, 4D without ``channel_axis``, a shape that does not fit ``spatial_dims``,
            NaN voxels, or non-integer labels.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        raw_kind = img.get_data_dtype().kind
        data = _read_data(img, path)
    except Exception as err:  # nibabel raises many types for broken files; name the file
        raise ScanLoadError(f"{path}: cannot read as NIfTI: {err}") from err
    affine = np.asarray(img.affine, dtype=np.float64)
    while data.ndim > 3 and data.shape[-1] == 1 and not (channel_axis is not None and data.ndim == 4):
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 4:
        if channel_axis is None:
            raise ScanLoadError(
                f"{path}: 4D image of shape {data.shape} (time series or channels); pass channel_axis (e.g. 3) "
                "to load it channel-first, or split it into 3D files."
            )
        data = np.moveaxis(data, channel_axis, 0)
    elif data.ndim != 3:
        raise ScanLoadError(f"{path}: expected a 2D, 3D or 4D image, got shape {data.shape}.")
    elif channel_axis is not None:
        raise ScanLoadError(f"{path}: channel_axis={channel_axis} given but the image is 3D {data.shape}.")
    if spatial_dims == 2:
        if data.shape[-1] != 1:
            raise ScanLoadError(
                f"{path}: spatial_dims=2 needs a 2D image (X, Y) or (X, Y, 1), got shape {data.shape}."
            )
        data = data[..., 0]
    elif spatial_dims != 3:
        raise ScanLoadError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if label:
        data = _label_array(data, path)
    else:
        if raw_kind == "f" and np.isnan(data).any():
            raise ScanLoadError(f"{path}: image contains {int(np.isnan(data).sum())} NaN voxels.")
        data = data.astype(dtype or np.float32, copy=False)
    if not data.flags.writeable or not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[:spatial_dims])
    return data, affine, {"spacing": spacing}
