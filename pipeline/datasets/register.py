"""``clinseg register``: align a moving scan to a fixed one and write it, resampled onto the fixed grid, with
its transform (:func:`transforms.geometry.registration.register_images` on files)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from transforms.io.atomic import atomic_write
from transforms.io.sitk import from_sitk
from transforms.io.nifti import is_nifti_path
from transforms.io.nifti_write import write_nifti
from transforms.geometry.registration import (
    RegistrationOptions,
    RegistrationResult,
    read_image,
    register_images,
    resample_to,
)

__all__ = ["register_files", "transform_path"]


def transform_path(out: str | Path) -> Path:
    """Where the transform of output ``out`` goes by default: ``out``'s name with ``.tfm`` (``a.nii.gz`` ->
    ``a.tfm``)."""
    out = Path(out)
    name = out.name[: -len(".nii.gz")] if out.name.lower().endswith(".nii.gz") else out.stem
    return out.with_name(f"{name}.tfm")


def register_files(
    fixed: str | Path,
    moving: str | Path,
    out: str | Path,
    *,
    transform_out: str | Path | None = None,
    deformable: bool = False,
    options: RegistrationOptions | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` and write the resampled moving image and the transform.

    Args:
        fixed: the reference scan (NIfTI file or DICOM folder); the output takes its grid.
        moving: the scan to align (NIfTI file or DICOM folder).
        out: output ``.nii`` / ``.nii.gz``, written atomically.
        transform_out: the fixed -> moving transform as an ITK ``.tfm`` (default: ``out`` with ``.tfm``).
        deformable: add a B-spline stage.
        options: :class:`RegistrationOptions`.

    Returns:
        The :class:`RegistrationResult`.

    Raises:
        ScanLoadError: a scan cannot be loaded (the message names it).
        ValueError: ``out`` is not a NIfTI name, or ``transform_out`` does not end in ``.tfm``.
        FileNotFoundError: an output folder does not exist.
    """
    out = Path(out)
    if not is_nifti_path(out):
        raise ValueError(f"{out}: the output must be a .nii or .nii.gz file.")
    transform_out = Path(transform_out) if transform_out else transform_path(out)
    if transform_out.suffix.lower() != ".tfm":
        raise ValueError(f"{transform_out}: the transform file must end in .tfm.")
    for path in (out, transform_out):
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path}: its folder {path.parent} does not exist.")
    fixed_image, moving_image = read_image(fixed), read_image(moving)
    result = register_images(fixed_image, moving_image, deformable=deformable, options=options)
    aligned = resample_to(fixed_image, moving_image, result.transform)
    write_nifti(*from_sitk(aligned), out)
    with atomic_write(transform_out) as tmp:
        sitk.WriteTransform(result.transform, str(tmp))
    return result
