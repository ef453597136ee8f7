"""Attention U-Net: a U-Net whose skips pass through additive attention gates driven by the decoder."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv
from torch import nn

from networks.blocks.attention import AttentionGate
from networks.blocks.padding import pad_to_match
from networks.blocks.validation import check_channels
from networks.nets.base import BaseNet
from networks.registry import register_network

__all__ = ["AttentionUNet"]


class _GatedUpStage(nn.Module):
    """Transposed conv, pad to the skip, gate the skip with the up-sampled map, concatenate, two convs."""

    def __init__(
        self, spatial_dims: int, in_channels: int, skip_channels: int, norm, act, dropout: float
    ) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, skip_channels, kernel_size=2, stride=2)
        self.gate = AttentionGate(
            spatial_dims, skip_channels, skip_channels, max(skip_channels // 2, 1), norm
        )
        self.convs = TwoConv(spatial_dims, 2 * skip_channels, skip_channels, act, norm, True, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = pad_to_match(self.up(x), skip)
        return self.convs(torch.cat([self.gate(up, skip), up], dim=1))


@register_network("attention_unet")
class AttentionUNet(BaseNet):
    """Attention U-Net (Oktay et al. 2018), 2D or 3D, returning logits.

    Encoder and decoder convs reuse MONAI's ``TwoConv``/``Down`` (``BasicUNet``'s blocks). Not a wrapper of
    ``monai.networks.nets.AttentionUnet``: that one fixes BatchNorm and ReLU and fails on odd input sizes
    (its concatenations need sizes divisible by the strides); here each up-sampled map is padded to its skip.

    Args:
        channels: width per level, at least two.
        spatial_dims, in_channels, out_channels, norm, act, dropout: as in :class:`BaseNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        spatial_dims, dropout = self.spatial_dims, self.dropout
        channels = check_channels(type(self).__name__, "channels", channels, min_len=2)

        self.stem = TwoConv(spatial_dims, self.in_channels, channels[0], act, norm, True, dropout)
        self.downs = nn.ModuleList(
            Down(spatial_dims, c_in, c_out, act, norm, True, dropout)
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.ups = nn.ModuleList(
            _GatedUpStage(spatial_dims, c_deep, c_skip, norm, act, dropout)
            for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1])
        )
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], self.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``."""
        x = self.stem(x)
        skips: list[torch.Tensor] = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
