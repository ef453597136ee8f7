"""Dense blocks (DenseNet style): each layer sees the concatenation of all earlier feature maps."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Dropout
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["DenseBlock", "DenseLayer"]


class DenseLayer(nn.Sequential):
    """norm -> act -> 3x3 conv -> channel dropout: ``(B, in_channels, *s) -> (B, growth_rate, *s)``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        growth_rate: int,
        norm: str | tuple,
        act: str | tuple,
        dropout: float,
    ) -> None:
        super().__init__(
            get_norm_layer(norm, spatial_dims=spatial_dims, channels=in_channels),
            get_act_layer(act),
            Conv[Conv.CONV, spatial_dims](in_channels, growth_rate, kernel_size=3, padding=1),
            Dropout[Dropout.DROPOUT, spatial_dims](dropout),
        )


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the input and every new map concatenated.

    Shapes:
        ``(B, in_channels, *s) -> (B, in_channels + num_layers * growth_rate, *s)`` (see ``out_channels``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        norm: str | tuple,
        act: str | tuple,
        dropout: float,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, in_channels + i * growth_rate, growth_rate, norm, act, dropout)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: list[torch.Tensor] = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)
