"""Between clinseg's images and the arrays nnU-Net's predictor takes and returns.

nnU-Net reads NIfTI with SimpleITK (``SimpleITKIO``): ``GetArrayFromImage`` gives the voxels in the file's own
storage order with the axes reversed, ``(Z, Y, X)`` = (k, j, i) of the NIfTI index (i, j, k), and the spacing
reversed, ``(sz, sy, sx)``. The direction cosines (LPS) never reach preprocessing, the network or the
resampling: nnU-Net keeps them only to write its output back with the input's header.

clinseg's loader (:class:`transforms.io.scan.LoadScand`) keeps a NIfTI file's storage order too: ``(C, X, Y, Z)``
= (c, i, j, k) with the file's affine (RAS). So the array nnU-Net would read from the same file is exactly the
transpose ``(C, Z, Y, X)`` of clinseg's, and the spacing is the affine's column norms reversed; no flip, no
reorientation, which would change what the network sees. The mask nnU-Net returns ``(Z, Y, X)`` on that array's
grid is transposed back to ``(1, X, Y, Z)`` and takes the input's affine unchanged: it is the input grid.

A DICOM series (or an in-memory image) goes in the voxel order clinseg loads it in: the order SimpleITK reads
from the NIfTI clinseg writes of it (e.g. ``seg.nii.gz``'s grid), columns, rows, then slices by position.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["from_nnunet", "to_nnunet"]


def to_nnunet(channels: list[MetaTensor]) -> tuple[np.ndarray, dict[str, list[float]]]:
    """nnU-Net's input of the channels ``(1, X, Y, Z)`` as loaded (one grid): ``(C, Z, Y, X)`` float32 and
    ``{"spacing": [sz, sy, sx]}`` (mm, the affine's column norms)."""
    first = channels[0]
    for other in channels[1:]:
        if tuple(other.shape[1:]) != tuple(first.shape[1:]) or not torch.allclose(
            torch.as_tensor(other.affine, dtype=torch.float64), torch.as_tensor(first.affine, dtype=torch.float64),
            atol=1e-4,
        ):
            raise ValueError("nnU-Net models need every channel on one grid (same shape and affine within 1e-4 mm)")
    array = np.concatenate([np.asarray(c.detach().cpu(), dtype=np.float32) for c in channels], axis=0)
    if array.ndim != 4:
        raise ValueError(f"nnU-Net 3D models take (C, X, Y, Z) images, got shape {tuple(array.shape)}")
    affine = torch.as_tensor(first.affine, dtype=torch.float64)
    spacing = torch.linalg.norm(affine[:3, :3], dim=0).tolist()
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1)), {"spacing": spacing[::-1]}


def from_nnunet(array: np.ndarray, reference: MetaTensor, dtype: torch.dtype = torch.uint8) -> MetaTensor:
    """An nnU-Net output ``(Z, Y, X)`` (labels) or ``(C, Z, Y, X)`` (probabilities) on ``reference``'s grid:
    ``(1, X, Y, Z)`` or ``(C, X, Y, Z)`` with ``reference``'s meta and affine."""
    values = np.asarray(array)
    values = values[None] if values.ndim == 3 else values
    out = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 2, 1))).to(dtype)
    if tuple(out.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"nnU-Net returned shape {tuple(out.shape[1:])}, the input is {tuple(reference.shape[1:])}")
    return MetaTensor(out, meta={**reference.meta, "affine": reference.affine.clone()})
