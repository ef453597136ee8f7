"""ResUNet: residual encoder/decoder with spatial attention on the decoder's skip concatenations."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetResBlock
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from networks.blocks.attention import SpatialAttention
from networks.blocks.padding import crop_spatial, pad_to_multiple
from networks.blocks.validation import check_channels, check_kernel_size
from networks.nets.base import BaseNet
from networks.registry import register_network

__all__ = ["ResUNet"]

#: Widths of the ResUNet article (2D, 256 x 256 patches).
ARTICLE_CHANNELS = (64, 128, 256, 512, 1024)
#: A four-level preset small enough to train and run on a CPU.
CPU_CHANNELS = (16, 32, 64, 128)


class _ResUpStage(nn.Module):
    """Transposed-conv up-sampling, skip concatenation, spatial attention, residual block."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm, act, dropout: float, kernel: int
    ) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.attention = SpatialAttention(spatial_dims, kernel)
        self.block = UnetResBlock(spatial_dims, 2 * out_channels, out_channels, 3, 1, norm, act, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([skip, self.up(x)], dim=1)
        return self.block(self.attention(x))


@register_network("res_unet")
class ResUNet(BaseNet):
    """Residual U-Net with spatial attention, 2D or 3D, returning logits.

    Each level is a residual block (two 3x3 convs with norm, 1x1 projection shortcut when the width changes,
    MONAI's ``UnetResBlock``); 2x max-pool down-sampling, 2x transposed-conv up-sampling. The decoder
    weights each concatenation ``[skip, up]`` with :class:`SpatialAttention` before its residual block.
    Inputs of any size are zero-padded to a multiple of ``2 ** (len(channels) - 1)``, the output cropped back.

    Args:
        channels: width per level, at least two levels; the article uses ``(64, 128, 256, 512, 1024)``,
            ``CPU_CHANNELS = (16, 32, 64, 128)`` is a CPU-sized preset.
        attention_kernel_size: odd kernel size of the spatial attention convolution.
        deep_supervision: in training mode return ``(B, 1 + len(channels) - 2, out_channels, *spatial)``:
            index 0 the full-resolution logits, then 1x1-conv heads of the coarser decoder levels upsampled
            (bilinear/trilinear) to the input size, as MONAI's ``DynUNet``. Eval mode always returns
            ``(B, out_channels, *spatial)``. Needs at least three levels.
        spatial_dims, in_channels, out_channels, norm, act, dropout: as in :class:`BaseNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = ARTICLE_CHANNELS,
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        attention_kernel_size: int = 7,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        owner, spatial_dims, dropout = type(self).__name__, self.spatial_dims, self.dropout
        channels = check_channels(owner, "channels", channels, min_len=2)
        kernel = check_kernel_size(owner, "attention_kernel_size", attention_kernel_size)
        if deep_supervision and len(channels) < 3:
            raise ValueError(
                f"{owner}: deep_supervision needs at least 3 levels in channels, got {channels!r}."
            )

        self.deep_supervision = bool(deep_supervision)
        self.multiple = 2 ** (len(channels) - 1)
        self.interp_mode = "bilinear" if spatial_dims == 2 else "trilinear"

        pool = Pool[Pool.MAX, spatial_dims]
        encoder: list[nn.Module] = [
            UnetResBlock(spatial_dims, self.in_channels, channels[0], 3, 1, norm, act, dropout)
        ]
        for c_in, c_out in itertools.pairwise(channels):
            block = UnetResBlock(spatial_dims, c_in, c_out, 3, 1, norm, act, dropout)
            encoder.append(nn.Sequential(pool(kernel_size=2, stride=2), block))
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(
            _ResUpStage(spatial_dims, c_deep, c_skip, norm, act, dropout, kernel)
            for c_deep, c_skip in zip(channels[:0:-1], channels[-2::-1])
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.head = conv(channels[0], self.out_channels, kernel_size=1)
        # one 1x1 head per decoder stage except the last (full-resolution) one, coarsest first
        ds_widths = channels[-2:0:-1] if self.deep_supervision else ()
        self.ds_heads = nn.ModuleList(conv(c, self.out_channels, kernel_size=1) for c in ds_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)`` (stacked: DS training)."""
        shape: list[int] = [int(s) for s in x.shape[2:]]
        x = pad_to_multiple(x, self.multiple)
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip
        features: list[torch.Tensor] = []
        for stage in self.decoder:
            x = stage(x, skips.pop())
            features.append(x)
        out = self.head(x)
        if self.training and self.deep_supervision:
            padded = out.shape[2:]
            outputs = [crop_spatial(out, shape)]
            for i, ds_head in enumerate(self.ds_heads):
                coarse = F.interpolate(ds_head(features[i]), size=padded, mode=self.interp_mode)
                outputs.append(crop_spatial(coarse, shape))
            return torch.stack(outputs, dim=1)
        return crop_spatial(out, shape)
