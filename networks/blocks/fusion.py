"""Feature fusion across modality encoders: concatenation + 1x1 conv, or softmax attention over modalities."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["ModalityFusion"]


class ModalityFusion(nn.Module):
    """Fuse ``N`` same-shaped feature maps ``(B, C, *s)`` into one ``(B, C, *s)``.

    ``"concat"``: concatenate to ``(B, N*C, *s)`` then 1x1 conv, norm, act (the fusion article's block).
    ``"attention"``: a shared 1x1 conv scores each modality per voxel, a softmax over the ``N`` scores weights
    the maps, and their weighted sum goes through the same 1x1 conv, norm, act.

    Args:
        spatial_dims: 2 or 3.
        num_modalities: ``N``.
        channels: ``C``.
        mode: ``"concat"`` or ``"attention"``.
        norm: normalisation as ``("name", {kwargs})`` or a name.
        act: activation as ``("name", {kwargs})`` or a name.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        channels: int,
        mode: str,
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.attention = mode == "attention"
        in_channels = channels if self.attention else num_modalities * channels
        self.score = (
            Conv[Conv.CONV, spatial_dims](channels, 1, kernel_size=1) if self.attention else nn.Identity()
        )
        self.mix = Convolution(spatial_dims, in_channels, channels, kernel_size=1, act=act, norm=norm)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.attention:
            stacked = torch.stack(features, dim=1)  # (B, N, C, *s)
            scores = torch.stack([self.score(f) for f in features], dim=1)  # (B, N, 1, *s)
            x = (torch.softmax(scores, dim=1) * stacked).sum(dim=1)
        else:
            x = torch.cat(features, dim=1)
        return self.mix(x)
