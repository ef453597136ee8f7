"""SimpleITK images to and from clinseg's geometry: channel-first arrays with a voxel -> RAS mm affine.

ITK keeps LPS origin, spacing and direction; clinseg (nibabel, MONAI's default) keeps a RAS affine. The voxel order
is the same, the array axes are reversed (SimpleITK's numpy view is ``(Z, Y, X)``).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, SpaceKeys

__all__ = ["from_sitk", "to_sitk"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(image: torch.Tensor | np.ndarray, affine: np.ndarray | torch.Tensor | None = None) -> sitk.Image:
    """A channel-first 3D image ``(1, X, Y, Z)`` (MetaTensor or array + affine) as a SimpleITK image.

    Args:
        image: ``(1, X, Y, Z)``; a MetaTensor carries its affine (RAS unless its meta says LPS).
        affine: ``(4, 4)`` voxel -> RAS mm, needed for plain arrays (overrides a MetaTensor's).

    Returns:
        SimpleITK image with LPS origin and direction (ITK's convention), same voxel values.

    Raises:
        ValueError: not one channel of a 3D image, no affine, or an affine with a zero-length voxel axis.
    """
    space = SpaceKeys.RAS
    if affine is None:
        if not isinstance(image, MetaTensor):
            raise ValueError("to_sitk: a plain array needs its affine (voxel -> RAS mm).")
        affine = image.affine
        space = image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(
            f"to_sitk: expected one channel of a 3D image (1, X, Y, Z), got shape {array.shape}."
        )
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"to_sitk: expected a (4, 4) affine, got shape {matrix.shape}.")
    lps = matrix if str(space) == str(SpaceKeys.LPS) else _RAS_TO_LPS @ matrix
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing < 1e-6):
        raise ValueError(f"to_sitk: the affine has a zero-length voxel axis (spacing {spacing.tolist()}).")
    result = sitk.GetImageFromArray(np.ascontiguousarray(array[0].transpose(2, 1, 0)))
    result.SetSpacing(spacing.tolist())
    result.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    result.SetOrigin(lps[:3, 3].tolist())
    return result


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A 3D SimpleITK image as ``(array (X, Y, Z), affine (4, 4) voxel -> RAS mm)``."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"from_sitk: expected a 3D single-channel image, got dimension {image.GetDimension()} with "
            f"{image.GetNumberOfComponentsPerPixel()} components."
        )
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), _RAS_TO_LPS @ lps
