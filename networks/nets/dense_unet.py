"""Dense U-Net: dense blocks on both paths, 1x1-conv + pooling transitions, transposed-conv decoder."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from networks.blocks.dense import DenseBlock
from networks.blocks.padding import pad_to_match
from networks.blocks.validation import check_kernel_size, check_positive_int
from networks.nets.base import BaseNet
from networks.registry import register_network

__all__ = ["DenseUNet"]


class _DenseUpStage(nn.Module):
    """Transposed conv halving the channels, pad to the skip, concatenate, dense block."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        layers: int,
        growth: int,
        norm,
        act,
        dropout: float,
    ) -> None:
        super().__init__()
        up = max(in_channels // 2, 1)
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, up, kernel_size=2, stride=2)
        self.block = DenseBlock(spatial_dims, up + skip_channels, layers, growth, norm, act, dropout)
        self.out_channels = self.block.out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_to_match(self.up(x), skip)
        return self.block(torch.cat([x, skip], dim=1))


@register_network("dense_unet")
class DenseUNet(BaseNet):
    """Dense U-Net (as in the Dense U-Net article), 2D or 3D, returning logits.

    ``k x k`` stem conv to ``init_features``; per level a dense block (``layers_per_block`` layers of
    norm -> act -> 3x3 conv -> dropout, ``growth_rate`` new channels each) whose output is the skip, then a
    transition down (1x1 conv + 2x max pooling); a dense bridge followed by a 1x1 conv doubling its width; per
    level a 2x2 transposed conv halving the channels, concatenation with the skip (padded to its size for odd
    inputs) and a dense block; a 3x3 conv (norm, act) back to ``init_features`` and a 1x1 conv to the logits.

    Args:
        init_features: width of the stem (64 in the article).
        growth_rate: channels added by each dense layer (16).
        layers_per_block: dense layers per block (4).
        levels: number of down-sampling steps (2 in the article).
        stem_kernel_size: odd kernel size of the stem convolution (7).
        norm: as in :class:`BaseNet` (BatchNorm in the article).
        dropout: channel-dropout probability after each dense layer's conv, in ``[0, 1)`` (0.2).
        spatial_dims, in_channels, out_channels, act: as in :class:`BaseNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        init_features: int = 64,
        growth_rate: int = 16,
        layers_per_block: int = 4,
        levels: int = 2,
        stem_kernel_size: int = 7,
        norm: str | tuple = ("batch", {}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.2,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        owner, spatial_dims, dropout = type(self).__name__, self.spatial_dims, self.dropout
        init_features = check_positive_int(owner, "init_features", init_features)
        growth = check_positive_int(owner, "growth_rate", growth_rate)
        layers = check_positive_int(owner, "layers_per_block", layers_per_block)
        levels = check_positive_int(owner, "levels", levels)
        stem_kernel_size = check_kernel_size(owner, "stem_kernel_size", stem_kernel_size)
        conv = Conv[Conv.CONV, spatial_dims]

        self.stem = conv(
            self.in_channels, init_features, kernel_size=stem_kernel_size, padding=stem_kernel_size // 2
        )
        encoder: list[nn.Module] = []
        transitions: list[nn.Module] = []
        skip_widths: list[int] = []
        width = init_features
        for _ in range(levels):
            block = DenseBlock(spatial_dims, width, layers, growth, norm, act, dropout)
            width = block.out_channels
            encoder.append(block)
            transitions.append(
                nn.Sequential(conv(width, width, kernel_size=1), Pool[Pool.MAX, spatial_dims](2))
            )
            skip_widths.append(width)
        self.encoder = nn.ModuleList(encoder)
        self.transitions = nn.ModuleList(transitions)
        bridge = DenseBlock(spatial_dims, width, layers, growth, norm, act, dropout)
        width = 2 * bridge.out_channels
        self.bridge = nn.Sequential(bridge, conv(bridge.out_channels, width, kernel_size=1))
        decoder: list[_DenseUpStage] = []
        for skip in reversed(skip_widths):
            stage = _DenseUpStage(spatial_dims, width, skip, layers, growth, norm, act, dropout)
            width = stage.out_channels
            decoder.append(stage)
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Sequential(
            Convolution(spatial_dims, width, init_features, act=act, norm=norm),
            conv(init_features, self.out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``."""
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for block, transition in zip(self.encoder, self.transitions):
            x = block(x)
            skips.append(x)
            x = transition(x)
        x = self.bridge(x)
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)
