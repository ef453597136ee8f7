"""Attention blocks: spatial attention (channel mean + max -> conv -> sigmoid), additive attention gate."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from torch import nn

__all__ = ["AttentionGate", "SpatialAttention"]


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


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay 2018): a decoder signal ``g`` selects where the skip ``x`` passes.

    ``alpha = sigmoid(psi(relu(norm(W_g g) + norm(W_x x))))``, ``out = x * alpha``. Like MONAI's
    ``AttentionBlock`` but with a configurable ``norm`` (MONAI's hard-codes BatchNorm) and no norm on the
    one-channel map.

    Args:
        spatial_dims: 2 or 3.
        gate_channels: channels of ``g`` ``(B, Cg, *s)``.
        skip_channels: channels of ``x`` ``(B, Cx, *s)`` (same spatial size as ``g``).
        inter_channels: width of the intermediate 1x1 projections.
        norm: normalisation as ``("name", {kwargs})`` or a name.
    """

    def __init__(
        self,
        spatial_dims: int,
        gate_channels: int,
        skip_channels: int,
        inter_channels: int,
        norm: str | tuple,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.w_g = nn.Sequential(
            conv(gate_channels, inter_channels, kernel_size=1),
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=inter_channels),
        )
        self.w_x = nn.Sequential(
            conv(skip_channels, inter_channels, kernel_size=1),
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=inter_channels),
        )
        self.psi = conv(inter_channels, 1, kernel_size=1)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_g(g) + self.w_x(x))))
        return x * alpha
