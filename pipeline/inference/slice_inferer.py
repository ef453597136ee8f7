"""Slice-by-slice inference of a 2D network: volumes one axial slice at a time, single slices as they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

__all__ = ["SliceWiseInferer"]


class SliceWiseInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` (a 2D ``roi_size`` sliding window over each slice along
    ``spatial_dim`` of a ``(B, C, X, Y, Z)`` volume, the outputs stacked back into ``(B, O, X, Y, Z)``) that also
    takes a single slice ``(B, C, X, Y)``, which it infers with the plain 2D sliding window.

    Neighbouring slices as channels (2.5D) come from the preprocessing
    (:class:`transforms.geometry.slices.NeighbourSlicesd`), so each slice already carries them."""

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if inputs.ndim == len(self.orig_roi_size) + 2:
            self.roi_size = self.orig_roi_size
            return SlidingWindowInferer.__call__(self, inputs, network, *args, **kwargs)
        return super().__call__(inputs, network, *args, **kwargs)
