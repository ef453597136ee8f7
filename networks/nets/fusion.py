"""Multi-modal (e.g. CT + MR) image fusion and the joint fusion -> segmentation model."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from networks.blocks.fusion import ModalityFusion
from networks.blocks.validation import check_channels, check_choice
from networks.nets.base import BaseNet
from networks.registry import get_network_class, register_network

__all__ = ["DualEncoderFusion", "FeatureFusionUNet", "FusionSegNet"]

FUSION_MODES = ("concat", "attention")
STAGES = ("fusion_pretrain", "joint")


@register_network("dual_encoder_fusion")
class DualEncoderFusion(BaseNet):
    """One encoder per modality, per-level feature fusion, one U-Net decoder producing a fused image.

    The input stacks the ``N = in_channels`` co-registered modalities as channels; modality ``k`` goes through
    its own encoder (MONAI ``TwoConv``/``Down`` stages), the ``N`` maps of every level are fused by
    :class:`ModalityFusion` and decoded with MONAI ``UpCat`` stages (which pad odd sizes). The output is a
    fused IMAGE in ``[0, 1]`` (sigmoid), not segmentation logits: sources are expected scaled to ``[0, 1]``.

    Args:
        in_channels: number of modalities ``N`` (at least 2).
        out_channels: channels of the fused image.
        features: width per level, at least two.
        fusion: ``"concat"`` (concatenate + 1x1 conv) or ``"attention"`` (softmax weights over modalities).
        spatial_dims, norm, act, dropout: as in :class:`BaseNet`.

    Shapes:
        ``(B, N, *spatial)`` -> ``(B, out_channels, *spatial)``, values in ``[0, 1]``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128),
        fusion: str = "concat",
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        owner, spatial_dims, dropout = type(self).__name__, self.spatial_dims, self.dropout
        in_channels = self.in_channels
        if in_channels < 2:
            raise ValueError(
                f"{owner}: in_channels is the number of modalities and must be >= 2, got {in_channels}."
            )
        features = check_channels(owner, "features", features, min_len=2)
        fusion = check_choice(owner, "fusion", fusion, FUSION_MODES)

        def encoder() -> nn.ModuleList:
            stages: list[nn.Module] = [TwoConv(spatial_dims, 1, features[0], act, norm, True, dropout)]
            stages += [
                Down(spatial_dims, a, b, act, norm, True, dropout) for a, b in itertools.pairwise(features)
            ]
            return nn.ModuleList(stages)

        self.encoders = nn.ModuleList(encoder() for _ in range(in_channels))
        self.fusers = nn.ModuleList(
            ModalityFusion(spatial_dims, in_channels, f, fusion, norm, act) for f in features
        )
        self.ups = nn.ModuleList(
            UpCat(spatial_dims, deep, skip, skip, act, norm, True, dropout)
            for deep, skip in zip(features[:0:-1], features[-2::-1])
        )
        self.head = Conv[Conv.CONV, spatial_dims](features[0], self.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, *spatial)`` modalities -> fused image ``(B, out_channels, *spatial)`` in ``[0, 1]``."""
        return torch.sigmoid(self.head(self.decode(x)))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, *spatial)`` -> the decoder's last features ``(B, features[0], *spatial)``."""
        per_modality: list[list[torch.Tensor]] = []
        for k, encoder in enumerate(self.encoders):
            h = x[:, k : k + 1]
            levels: list[torch.Tensor] = []
            for stage in encoder:
                h = stage(h)
                levels.append(h)
            per_modality.append(levels)
        fused: list[torch.Tensor] = []
        for level, fuser in enumerate(self.fusers):
            fused.append(fuser([levels[level] for levels in per_modality]))
        h = fused.pop()
        for up in self.ups:
            h = up(h, fused.pop())
        return h


@register_network("feature_fusion_unet")
class FeatureFusionUNet(DualEncoderFusion):
    """Feature-level fusion segmenter: one encoder per modality, per-level fusion, one decoder to class logits.

    The :class:`DualEncoderFusion` architecture with a segmentation head: the ``N`` modalities are fused at
    every encoder level and the decoder sees all fused levels, instead of a segmenter seeing one fused
    *image* (:class:`FusionSegNet`, which lost to channel stacking on BRATS, benchmarks/RESULTS.md).
    ``fused_image_head=True`` adds a 1x1 conv + sigmoid on the decoder's last features that makes a fused
    image for the auxiliary fusion loss (``pipeline.training.losses.JointFusionSegLoss``); then each
    ``forward`` stores ``last_fused`` ``(B, 1, *spatial)`` and ``last_input`` as :class:`FusionSegNet` does.
    ``set_stage("fusion_pretrain")`` trains everything but the segmentation head (on the fusion loss alone).

    Args:
        out_channels: segmentation classes (logits).
        fused_image_head: add the fused-image head for an auxiliary fusion loss.
        norm: batch norm by default, as :class:`~networks.nets.unet.UNet`: with instance norm, the sliding
            windows of a skull-stripped MR that lie wholly in its constant background (never a whole training
            patch) normalise to nothing and came out as tumour, 1.5 L of it outside the brain on BRATS.
        Other arguments as :class:`DualEncoderFusion`.

    Shapes:
        ``(B, N, *spatial)`` -> logits ``(B, out_channels, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        fusion: str = "concat",
        fused_image_head: bool = False,
        norm: str | tuple = ("batch", {}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features, fusion, norm, act, dropout)
        self.fused_head = (
            Conv[Conv.CONV, self.spatial_dims](self.head.in_channels, 1, kernel_size=1)
            if fused_image_head
            else None
        )
        self.stage = "joint"
        # plain attributes (not buffers: never saved); empty until the first forward with a fused-image head
        self.last_fused = torch.empty(0)
        self.last_input = torch.empty(0)

    def forward_with_fused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, *spatial)`` -> ``(logits (B, out_channels, *spatial), fused (B, 1, *spatial))``."""
        if self.fused_head is None:
            raise ValueError("FeatureFusionUNet: built without fused_image_head, so it makes no fused image.")
        h = self.decode(x)
        return self.head(h), torch.sigmoid(self.fused_head(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, *spatial)``; sets ``last_fused``/``last_input`` with the head."""
        if self.fused_head is None:
            return self.head(self.decode(x))
        logits, self.last_fused = self.forward_with_fused(x)
        self.last_input = x
        return logits

    def set_stage(self, stage: str) -> FeatureFusionUNet:
        """``"fusion_pretrain"``: all but the segmentation head trains; ``"joint"``: everything trains."""
        self.stage = check_choice(type(self).__name__, "stage", stage, STAGES)
        if self.stage == "fusion_pretrain" and self.fused_head is None:
            raise ValueError("FeatureFusionUNet: fusion pretraining needs fused_image_head=True.")
        self.requires_grad_(True)
        self.head.requires_grad_(self.stage == "joint")
        return self


@register_network("fusion_seg_net")
class FusionSegNet(BaseNet):
    """Joint model: :class:`DualEncoderFusion` makes a one-channel fused image, a registered net segments it.

    Contract for MONAI engines: the modalities come stacked as channels and ``forward(x)`` returns the
    segmentation logits in training and eval mode alike. Each ``forward`` also stores ``self.last_fused``
    (the fused image ``(B, 1, *spatial)``, still attached to the graph) and ``self.last_input`` (the input
    modalities); both are empty tensors before the first call and hold the LAST call only, so a loss such as
    ``pipeline.training.losses.JointFusionSegLoss`` can add the fusion term. :meth:`forward_with_fused` returns both
    explicitly. Two-stage schedule: ``set_stage("fusion_pretrain")`` trains the fusion net alone (segmenter
    frozen), ``set_stage("joint")`` fine-tunes everything; :meth:`freeze_fusion` freezes or releases the
    fusion network by itself.

    Args:
        in_channels: number of modalities (at least 2).
        out_channels: segmentation classes (logits).
        fusion: ``"concat"`` or ``"attention"`` (see :class:`ModalityFusion`).
        fusion_features: widths of the fusion network's levels.
        segmenter: registered name of the segmentation network (any but the fusion ones).
        segmenter_kwargs: extra keyword arguments of the segmenter (widths, norm, ...).
        norm: normalisation of the fusion network.
        act: activation of the fusion network.
        dropout: dropout of the fusion network, in ``[0, 1)``.
        spatial_dims: as in :class:`BaseNet`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int = 2,
        fusion: str = "concat",
        fusion_features: Sequence[int] = (32, 64, 128),
        segmenter: str = "attention_unet",
        segmenter_kwargs: dict | None = None,
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, dropout)
        owner = type(self).__name__
        if segmenter in ("dual_encoder_fusion", "fusion_seg_net"):
            raise ValueError(f"{owner}: segmenter must be a segmentation network, got {segmenter!r}.")
        segmenter_kwargs = dict(segmenter_kwargs or {})
        clash = sorted({"spatial_dims", "in_channels", "out_channels"} & set(segmenter_kwargs))
        if clash:
            raise ValueError(f"{owner}: segmenter_kwargs must not set {clash}; they follow the joint model.")
        self.fusion_net = DualEncoderFusion(
            self.spatial_dims, self.in_channels, 1, fusion_features, fusion, norm, act, self.dropout
        )
        self.segmenter = get_network_class(segmenter)(
            spatial_dims=self.spatial_dims, in_channels=1, out_channels=self.out_channels, **segmenter_kwargs
        )
        self.stage = "joint"
        # plain attributes (not buffers: never saved); empty until the first forward
        self.last_fused = torch.empty(0)
        self.last_input = torch.empty(0)

    def forward_with_fused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N, *spatial)`` -> ``(logits (B, out_channels, *spatial), fused (B, 1, *spatial))``."""
        fused = self.fusion_net(x)
        return self.segmenter(fused), fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, *spatial)``; sets ``last_fused`` and ``last_input``.

        In the ``"fusion_pretrain"`` stage the frozen segmenter is not run (its output would feed nothing: the
        loss is the fusion term alone) and the fused image ``(B, 1, *spatial)`` is returned instead.
        """
        self.last_input = x
        if self.stage == "fusion_pretrain":
            self.last_fused = self.fusion_net(x)
            return self.last_fused
        logits, self.last_fused = self.forward_with_fused(x)
        return logits

    def freeze_fusion(self, frozen: bool = True) -> FusionSegNet:
        """Stop (or restart) gradient updates of the fusion network's parameters."""
        self.fusion_net.requires_grad_(not frozen)
        return self

    def set_stage(self, stage: str) -> FusionSegNet:
        """``"fusion_pretrain"``: only the fusion network trains; ``"joint"``: everything trains."""
        self.stage = check_choice(type(self).__name__, "stage", stage, STAGES)
        self.fusion_net.requires_grad_(True)
        self.segmenter.requires_grad_(self.stage == "joint")
        return self
