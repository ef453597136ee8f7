"""NIfTI loading with nibabel: affine as nibabel chooses it (sform, else qform), float images, exact labels.

Refused with a :class:`ScanLoadError` naming the file and the cause: unreadable files, headers declaring more
voxel data than the file holds, degenerate affines (non-finite, or a zero or collinear voxel axis), non-finite
voxels (NaN, +inf, -inf), 2D images given to a 3D loader.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from transforms.io.errors import ScanLoadError

__all__ = ["check_affine", "check_finite", "is_nifti_path", "label_values", "load_nifti", "nifti_array"]


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
    nbytes = int(np.prod(img.shape, dtype=object)) * dtype.itemsize
    gz = path.name.lower().endswith(".gz")
    if not gz:
        _check_size(img, path, path.stat().st_size - offset, nbytes)
    if float(proxy.slope) != 1.0 or float(proxy.inter) != 0.0:
        return np.asarray(proxy)
    raw = path.read_bytes()
    if gz:
        try:
            raw = zlib.decompress(raw, 31)
        except zlib.error:
            return np.asarray(proxy)
        _check_size(img, path, len(raw) - offset, nbytes)
    return np.ndarray(img.shape, dtype=dtype, buffer=raw, offset=offset, order="F")


def _reason(err: BaseException) -> str:
    """The error's message on one line, or its type name when the message is empty."""
    return " ".join(str(err).split()) or type(err).__name__


def _check_size(img: nib.Nifti1Image, path: Path, available: int, needed: int) -> None:
    """Raise when the header declares more voxel bytes than the file holds (truncated file or corrupt header)."""
    if available < needed:
        raise ScanLoadError(
            f"{path}: header declares shape {tuple(int(s) for s in img.shape)} of {img.get_data_dtype()} "
            f"({_size_text(needed)}) but the file holds {_size_text(max(available, 0))} of voxel data "
            "(truncated file or corrupt header)."
        )


def _size_text(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def check_affine(affine: np.ndarray, path: Path | str) -> None:
    """Raise when ``affine`` cannot place voxels in space: non-finite, a zero-length or collinear voxel axis.

    Raises:
        ScanLoadError: naming ``path`` and the cause (e.g. ``voxel axis 2 has zero length``).
    """
    if not np.all(np.isfinite(affine)):
        raise ScanLoadError(
            f"{path}: degenerate affine: it holds NaN or infinite values (corrupt sform/qform)."
        )
    columns = affine[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    zero = [i for i, n in enumerate(lengths) if n < 1e-6]
    if zero:
        raise ScanLoadError(
            f"{path}: degenerate affine: voxel axis {', '.join(map(str, zero))} has zero length "
            "(singular matrix, a voxel size of 0 mm in the sform/qform or pixdim)."
        )
    det = abs(float(np.linalg.det(columns / lengths)))
    if det < 1e-6:
        raise ScanLoadError(
            f"{path}: degenerate affine: the voxel axes are collinear (singular matrix, determinant {det:.3g}); "
            "fix the sform/qform."
        )


def check_finite(data: np.ndarray, path: Path | str) -> None:
    """Raise when float ``data`` holds NaN or infinite voxels (counts of each in the message)."""
    if data.dtype.kind not in "fc" or np.isfinite(data).all():
        return
    counts = {
        "NaN": int(np.isnan(data).sum()),
        "+inf": int(np.isposinf(data).sum()),
        "-inf": int(np.isneginf(data).sum()),
    }
    found = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    raise ScanLoadError(
        f"{path}: image contains non-finite voxels ({found}); only finite intensities are accepted."
    )


def label_values(data: np.ndarray, path: Path | str) -> np.ndarray:
    """Integer labels unchanged; integer-valued float storage cast to int32; anything else raises."""
    if data.dtype.kind in "iub":
        return data
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ScanLoadError(
            f"{path}: label image must hold integer values, found non-integer or non-finite voxels."
        )
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
        spatial_dims: 3 -> ``(X, Y, Z)`` (a 2D ``(X, Y)`` file is refused; ``(X, Y, 1)`` is a one-slice
            volume); 2 -> ``(X, Y)`` from ``(X, Y)`` or ``(X, Y, 1)`` files.
        channel_axis: axis holding channels in a 4D file; the channels are moved first -> ``(C, X, Y, Z)``.
            Without it 4D files are refused.
        label: keep integer values exact (stored integer dtype, or int32 for integer-valued float storage).
        dtype: output dtype for images (default float32); ignored for labels.

    Returns:
        ``(array, affine_ras (4, 4), meta)`` with array ``(X, Y[, Z])`` or ``(C, X, Y[, Z])`` when
        ``channel_axis`` is given.

    Raises:
        ScanLoadError: unreadable file, a header declaring more data than the file holds, a degenerate affine,
            4D without ``channel_axis``, a shape that does not fit ``spatial_dims``, non-finite voxels, or
            non-integer labels.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files; name the file and the reason
        raise ScanLoadError(f"{path}: cannot read as NIfTI: {_reason(err)}") from err
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, path)
    try:
        data = _read_data(img, path)
    except ScanLoadError:
        raise
    except MemoryError as err:
        raise ScanLoadError(
            f"{path}: cannot read as NIfTI: the header's shape {tuple(int(s) for s in img.shape)} needs more "
            "memory than this machine has (corrupt header?)."
        ) from err
    except Exception as err:
        raise ScanLoadError(f"{path}: cannot read as NIfTI: {_reason(err)}") from err
    data = nifti_array(
        data, path, spatial_dims=spatial_dims, channel_axis=channel_axis, label=label, dtype=dtype
    )
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[:spatial_dims])
    return data, affine, {"spacing": spacing}


def nifti_array(
    data: np.ndarray,
    path: Path | str,
    *,
    spatial_dims: int = 3,
    channel_axis: int | None = None,
    label: bool = False,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """NIfTI voxel data as read (``(X, Y[, Z[, T]])``) -> ``(X, Y[, Z])``, or ``(C, X, Y[, Z])`` with
    ``channel_axis``, checked and cast as :func:`load_nifti` describes; ``path`` names the source in errors.
    """
    while data.ndim > 3 and data.shape[-1] == 1 and not (channel_axis is not None and data.ndim == 4):
        data = data[..., 0]
    if data.ndim == 2:
        if spatial_dims == 3:
            raise ScanLoadError(
                f"{path}: 2D image of shape {data.shape} given to a 3D loader: segment it with a 2D bundle "
                "(spatial_dims 2, e.g. bundles/ct_lesion_denseunet2d), or save it as (X, Y, 1) to treat it as a "
                "one-slice volume."
            )
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
        data = label_values(data, path)
    else:
        check_finite(data, path)
        data = data.astype(dtype or np.float32, copy=False)
    if not data.flags.writeable or not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data
