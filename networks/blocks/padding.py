"""Pad inputs to a multiple of the total down-sampling factor and crop outputs back (odd input sizes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["crop_spatial", "pad_to_match", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial dims of ``x`` ``(B, C, *spatial)`` at the end to a multiple of ``multiple``."""
    pads: list[int] = []
    spatial = x.shape[2:]
    for i in range(len(spatial) - 1, -1, -1):  # F.pad lists the last dimension first
        size = int(spatial[i])
        pads.append(0)
        pads.append((multiple - size % multiple) % multiple)
    return F.pad(x, pads)


def crop_spatial(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Crop ``x`` ``(B, C, *spatial)`` to its first ``shape[d]`` voxels along each spatial dim ``d``."""
    for d, size in enumerate(shape):
        x = x.narrow(d + 2, 0, size)
    return x


def pad_to_match(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Replicate-pad ``x`` at the far end of each spatial dim up to ``ref``'s spatial size.

    An up-sampled decoder map is at most one voxel short of its skip after a floor-rounding 2x pooling.
    """
    pads: list[int] = []
    for i in range(x.dim() - 1, 1, -1):
        pads.append(0)
        pads.append(int(ref.shape[i]) - int(x.shape[i]))
    return F.pad(x, pads, mode="replicate")
