"""The one NIfTI writer: an array and its RAS affine to ``.nii``/``.nii.gz``, atomically, with nibabel.

In ``transforms`` (beside the NIfTI reader) so that ``transforms.io.inspect`` and every ``pipeline`` writer
(masks, probabilities, imports, registration, synthetic phantoms) share it. Output is deterministic:
nibabel's gzip stream has no time stamp or file name, so equal inputs give equal bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from transforms.io.atomic import atomic_write
from transforms.io.nifti import is_nifti_path

__all__ = ["write_nifti"]

logger = logging.getLogger(__name__)

_SCANNER = 1  # NIfTI xform code "scanner anatomical"


def write_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    header: nib.Nifti1Header | None = None,
    slope: float | None = None,
    description: str | None = None,
) -> Path:
    """Write ``data`` ``(X, Y[, Z[, C]])`` with a 4x4 RAS voxel->world ``affine`` (mm) as NIfTI-1, atomically.

    Without ``header``: stored in ``data``'s own dtype, sform and qform both set to ``affine`` (code
    "scanner"; the qform is nibabel's closest rigid approximation of a sheared affine), units mm. A given
    ``header`` (e.g. copied from a source file) keeps its on-disk dtype, xform codes and units.

    Args:
        data: voxel array, e.g. int16 HU ``(512, 512, 120)`` or uint8 labels.
        affine: 4x4 voxel->world matrix in mm.
        path: ``*.nii.gz`` or ``*.nii`` destination; its folder must exist.
        header: header to start from (its data shape is set to ``data``'s).
        slope: ``scl_slope`` for quantised data (e.g. ``1/255``: stored uint8, read back as floats).
        description: the header's ``descrip`` (at most 80 ASCII characters).

    Returns:
        ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.nii``/``.nii.gz``, or ``affine`` is not 4x4.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"NIfTI output path must end with .nii or .nii.gz, got {str(path)!r}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine for {str(path)!r} must be 4x4, got shape {affine.shape}")
    if header is not None:
        header = header.copy()
        header.set_data_shape(data.shape)
    image = nib.Nifti1Image(data, affine, header)
    if header is None:
        image.set_data_dtype(data.dtype)
        image.set_sform(affine, code=_SCANNER)
        image.set_qform(affine, code=_SCANNER)
        image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    if description is not None:
        image.header["descrip"] = description.encode("ascii")
    with atomic_write(path) as tmp:
        nib.save(image, tmp)
    logger.debug("wrote %s", path)
    return path
