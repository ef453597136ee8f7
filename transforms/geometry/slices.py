"""Neighbouring slices as channels (2.5D): a 2D network sees each slice with ``k`` slices either side.

MONAI has no such transform; it runs on the whole volume, before a slice is cropped for training and before the
slice-by-slice inferer, so training and inference stack slices the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["NeighbourSlicesd", "neighbour_slices"]


def neighbour_slices(image: torch.Tensor, context: int) -> torch.Tensor:
    """Stack the ``context`` slices either side of each slice (last axis) as channels.

    Args:
        image: ``(C, X, Y, Z)``.
        context: ``k >= 0`` slices each side; 0 returns ``image`` unchanged.

    Returns:
        ``(C * (2k + 1), X, Y, Z)``: channel ``c * (2k + 1) + j`` at slice ``z`` is input channel ``c`` at slice
        ``z + j - k``, clamped to the first / last slice at the volume's ends. Meta (affine) as ``image``'s.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be an int >= 0, got {context!r}.")
    if context == 0:
        return image
    if image.ndim != 4:
        raise ValueError(
            f"neighbouring slices need a volume (C, X, Y, Z), got shape {tuple(image.shape)}; "
            "a datalist of single slices has no neighbours (use context 0)."
        )
    depth = image.shape[-1]
    offsets = torch.arange(-context, context + 1, device=image.device)
    index = (torch.arange(depth, device=image.device)[None, :] + offsets[:, None]).clamp(0, depth - 1)  # (2k+1, Z)
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    stacked = plain[..., index]  # (C, X, Y, 2k+1, Z)
    stacked = stacked.movedim(-2, 1).reshape(image.shape[0] * offsets.numel(), *image.shape[1:])
    return MetaTensor(stacked, meta=image.meta) if isinstance(image, MetaTensor) else stacked


class NeighbourSlicesd(MapTransform):
    """Dictionary version of :func:`neighbour_slices`, the same ``context`` for every key."""

    def __init__(self, keys: KeysCollection, context: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        neighbour_slices(torch.zeros(1, 1, 1, 1), context)  # checks context now, not at the first case
        self.context = context

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = neighbour_slices(d[key], self.context)
            except ValueError as err:
                source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{source}: {err}") from err
        return d
