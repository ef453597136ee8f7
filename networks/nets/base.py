"""What every clinseg network shares: its leading constructor arguments, checked up front, and their docs."""

from __future__ import annotations

from torch import nn

from networks.blocks.validation import check_channels, check_probability, check_spatial_dims

__all__ = ["BaseNet"]


class BaseNet(nn.Module):
    """Base of the registered networks: images in, same-size maps out, 2D or 3D.

    Each network spells out its full signature (bundles and checkpoints pass every argument by keyword) and
    calls ``super().__init__(spatial_dims, in_channels, out_channels, dropout)``, which checks them and keeps
    them as attributes. Every network takes these arguments, documented here once:

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (modalities).
        out_channels: output channels (class logits, unless the network says otherwise).
        norm: normalisation as ``("name", {kwargs})`` or a name (MONAI's ``Norm`` factory).
        act: activation as ``("name", {kwargs})`` or a name (MONAI's ``Act`` factory).
        dropout: dropout probability after each convolution, in ``[0, 1)``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: naming the network, the argument and the bad value.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        owner = type(self).__name__
        self.spatial_dims = check_spatial_dims(owner, spatial_dims)
        self.in_channels, self.out_channels = check_channels(
            owner, "in_channels/out_channels", (in_channels, out_channels)
        )
        self.dropout = check_probability(owner, "dropout", dropout)
