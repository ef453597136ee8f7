"""Attention blocks: spatial attention (channel mean + max maps -> k x k conv -> sigmoid)."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["SpatialAttention"]


class SpatialAttention(nn.Module):
    """Re-weight every voxel of ``x`` by a map computed from its channel mean and channel max.

    ``out = x * sigmoid(conv_k([mean_c(x), max_c(x)]))``; the map is ``(B, 1, *spatial)`` and is broadcast
    over channels, so the output keeps the input shape ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        kernel_size: odd size of the convolution over the two maps (7 in the ResUNet article).
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        peak = torch.amax(x, dim=1, keepdim=True)
        weight = torch.sigmoid(self.conv(torch.cat([avg, peak], dim=1)))
        return x * weight
