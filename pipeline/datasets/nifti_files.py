"""NIfTI helpers for import: header-only shapes, the case id of a file name, 4D channel splitting."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from transforms.io.nifti_write import write_nifti

NIFTI_ENDINGS = (".nii.gz", ".nii")


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, not hidden)."""
    return path.name.lower().endswith(NIFTI_ENDINGS) and not path.name.startswith(".")


def stem(path: Path) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    name = path.name
    for ending in NIFTI_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def header_shape(path: Path) -> tuple[int, ...]:
    """The data shape of a NIfTI file from its header (no voxels read); errors name the file."""
    try:
        return tuple(int(n) for n in nib.load(path).shape)
    except Exception as err:  # nibabel raises several types for unreadable headers
        raise ValueError(f"{path}: not a readable NIfTI file ({err})") from err


def split_channels(path: Path, names: list[str], out_dir: Path, case: str) -> dict[str, Path]:
    """Write each channel of a 4D ``(X, Y, Z, C)`` NIfTI as its own 3D NIfTI, same affine and header.

    Args:
        path: the 4D file, ``C == len(names)``.
        names: channel names, in file order.
        out_dir: folder for ``<case>_<name>.nii.gz``.
        case: the case id.

    Returns:
        channel name -> written file.
    """
    img = nib.load(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for c, name in enumerate(names):
        data = np.asanyarray(img.dataobj[..., c])
        written[name] = write_nifti(data, img.affine, out_dir / f"{case}_{name}.nii.gz", header=img.header)
    return written


def write_image(volume: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write an ``(X, Y, Z)`` image with a RAS ``affine`` as NIfTI, atomically; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(volume, affine, path)
