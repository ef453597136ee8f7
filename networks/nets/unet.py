"""Classic U-Net: DoubleConv / Down / Up / OutConv with transposed-conv or linear up-sampling."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from networks.blocks.padding import pad_to_match
from networks.blocks.validation import check_channels, check_choice
from networks.nets.base import BaseNet
from networks.registry import register_network

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "Up"]


class DoubleConv(nn.Sequential):
    """Two 3x3 convs, each followed by norm, dropout and activation: ``(B, in, *s) -> (B, out, *s)``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm,
        act,
        dropout: float,
        mid_channels: int | None = None,
    ) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            Convolution(spatial_dims, in_channels, mid, act=act, norm=norm, dropout=dropout),
            Convolution(spatial_dims, mid, out_channels, act=act, norm=norm, dropout=dropout),
        )


class Down(nn.Sequential):
    """2x max pooling then :class:`DoubleConv`: ``(B, in, *s) -> (B, out, *s // 2)``."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm, act, dropout: float
    ) -> None:
        super().__init__(
            Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2),
            DoubleConv(spatial_dims, in_channels, out_channels, norm, act, dropout),
        )


class Up(nn.Module):
    """Up-sample ``x``, pad it to the skip's size, concatenate ``[skip, x]`` and apply :class:`DoubleConv`.

    ``"transpose"`` halves the channels of ``x`` with a 2x2 transposed conv; ``"bilinear"`` (trilinear in 3D)
    keeps them and the DoubleConv's middle width is half the concatenation's, as in the article.

    Args:
        in_channels: channels of the deeper map ``x``.
        skip_channels: channels of the encoder skip.
        out_channels: output channels.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm,
        act,
        dropout: float,
        upsample: str,
    ) -> None:
        super().__init__()
        if upsample == "transpose":
            up = in_channels // 2
            self.up: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](in_channels, up, kernel_size=2, stride=2)
            self.conv = DoubleConv(spatial_dims, skip_channels + up, out_channels, norm, act, dropout)
        else:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up = nn.Upsample(scale_factor=2, mode=mode, align_corners=True)
            cat = skip_channels + in_channels
            self.conv = DoubleConv(spatial_dims, cat, out_channels, norm, act, dropout, cat // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_to_match(self.up(x), skip)
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Sequential):
    """1x1 convolution to the class logits."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1))


@register_network("unet")
class UNet(BaseNet):
    """The classic U-Net (Ronneberger 2015, as in the U-Net article), 2D or 3D, returning logits.

    Encoder: DoubleConv then ``len(features) - 1`` Down stages; decoder: Up stages mirroring them, each
    padding its up-sampled map to the skip's size (odd inputs work without padding the input), then OutConv.
    With ``upsample="bilinear"`` the bottleneck keeps ``features[-2]`` channels and each Up outputs the next
    shallower width, so every concatenation is symmetric (the article's variant, 17.3M parameters in 2D at
    base 64); with ``"transpose"`` the decoder mirrors ``features`` exactly (31.0M parameters).

    Args:
        features: width per level, at least two; ``(64, 128, 256, 512, 1024)`` is the article's.
        upsample: ``"transpose"`` (2x2 transposed conv) or ``"bilinear"`` (bi/trilinear, parameter-free).
        spatial_dims, in_channels, out_channels, norm, act, dropout: as in :class:`BaseNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        upsample: str = "transpose",
        norm: str | tuple = ("batch", {}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        owner, spatial_dims, dropout = type(self).__name__, self.spatial_dims, self.dropout
        widths = list(check_channels(owner, "features", features, min_len=2))
        upsample = check_choice(owner, "upsample", upsample, ("transpose", "bilinear"))
        bilinear = upsample == "bilinear"
        if bilinear:
            widths[-1] = widths[-2]  # the up-sampled bottleneck matches its skip

        self.inc = DoubleConv(spatial_dims, self.in_channels, widths[0], norm, act, dropout)
        self.downs = nn.ModuleList(
            Down(spatial_dims, c_in, c_out, norm, act, dropout) for c_in, c_out in itertools.pairwise(widths)
        )
        ups: list[nn.Module] = []
        c_deep = widths[-1]
        for level in range(len(widths) - 2, -1, -1):
            c_skip = widths[level]
            c_out = widths[level - 1] if bilinear and level > 0 else c_skip
            ups.append(Up(spatial_dims, c_deep, c_skip, c_out, norm, act, dropout, upsample))
            c_deep = c_out
        self.ups = nn.ModuleList(ups)
        self.outc = OutConv(spatial_dims, widths[0], self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> logits ``(B, out_channels, *spatial)``."""
        x = self.inc(x)
        skips: list[torch.Tensor] = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
