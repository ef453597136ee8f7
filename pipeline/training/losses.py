"""Training losses: Dice+CE / Dice+Focal presets, deep supervision, fusion (SSIM + gradient) and joint losses.

Every name here can be a bundle ``_target_`` (e.g. ``pipeline.training.losses.dice_focal_loss``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, SSIMLoss
from torch import nn

from pipeline.training.distributed import unwrap
from pipeline.training.partial_labels import MarginalDiceCELoss, MarginalDiceFocalLoss

__all__ = [
    "DeepSupervisionStackLoss",
    "FusionLoss",
    "JointFusionSegLoss",
    "dice_ce_loss",
    "dice_focal_loss",
    "gradient_magnitude",
]

logger = logging.getLogger(__name__)
MODES = ("multiclass", "binary")


def _check_mode(owner: str, mode: str) -> bool:
    """True for ``"multiclass"`` (softmax, one-hot labels), False for ``"binary"`` (sigmoid)."""
    if mode not in MODES:
        raise ValueError(f"{owner}: mode must be one of {MODES!r}, got {mode!r}.")
    return mode == "multiclass"


def _dice_activation(owner: str, mode: str, include_background: bool, batch: bool) -> dict[str, bool]:
    """The arguments MONAI's Dice-based losses share: activation and one-hot by ``mode``, background, batch."""
    multiclass = _check_mode(owner, mode)
    return {
        "include_background": include_background, "to_onehot_y": multiclass, "softmax": multiclass,
        "sigmoid": not multiclass, "batch": batch,
    }  # fmt: skip


def _check_weight(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{owner}: {name} must be a number >= 0, got {value!r}.")
    return float(value)


def dice_ce_loss(
    mode: str = "multiclass",
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    include_background: bool = True,
    class_weights: Sequence[float] | None = None,
    batch: bool = False,
) -> MarginalDiceCELoss:
    """MONAI ``DiceCELoss`` for logits ``(B, C, *spatial)`` and labels ``(B, 1, *spatial)``; labels marked with
    missing classes (``transforms.labels.partial_labels.MarkMissingLabelsd``) get the marginal loss of
    :mod:`pipeline.training.partial_labels` (multiclass mode).

    Args:
        mode: ``"multiclass"`` (softmax over C classes, integer labels one-hot) or ``"binary"`` (sigmoid;
            with one output channel the CE term is binary cross-entropy on logits, the article's Dice+BCE).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        include_background: whether channel 0 counts in the Dice term.
        class_weights: optional per-class CE weights (length C).
        batch: Dice over the whole batch instead of per sample.
    """
    return MarginalDiceCELoss(
        **_dice_activation("dice_ce_loss", mode, include_background, batch),
        weight=None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32),
        lambda_dice=_check_weight("dice_ce_loss", "lambda_dice", lambda_dice),
        lambda_ce=_check_weight("dice_ce_loss", "lambda_ce", lambda_ce),
    )


def dice_focal_loss(
    mode: str = "multiclass",
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    include_background: bool = True,
    class_weights: Sequence[float] | None = None,
    batch: bool = False,
) -> MarginalDiceFocalLoss:
    """MONAI ``DiceFocalLoss`` (the ResUNet and fusion articles' hybrid loss) for logits ``(B, C, *spatial)``;
    labels marked with missing classes are handled as :class:`MarginalDiceFocalLoss` says (multiclass mode).

    Args:
        mode: ``"multiclass"`` (softmax, one-hot labels) or ``"binary"`` (sigmoid, labels per channel).
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        gamma: focal exponent (2.0).
        alpha: optional focal class balance in ``[0, 1]``.
        include_background: whether channel 0 counts.
        class_weights: optional per-class focal weights (length C).
        batch: Dice over the whole batch instead of per sample.
    """
    return MarginalDiceFocalLoss(
        **_dice_activation("dice_focal_loss", mode, include_background, batch),
        gamma=_check_weight("dice_focal_loss", "gamma", gamma),
        weight=None if class_weights is None else list(class_weights),
        lambda_dice=_check_weight("dice_focal_loss", "lambda_dice", lambda_dice),
        lambda_focal=_check_weight("dice_focal_loss", "lambda_focal", lambda_focal),
        alpha=alpha,
    )


class DeepSupervisionStackLoss(DeepSupervisionLoss):
    """MONAI ``DeepSupervisionLoss`` that also takes the stacked output of a deeply supervised network.

    ``ResUNet(deep_supervision=True)`` (like MONAI's ``DynUNet``) returns ``(B, S, C, *spatial)`` in training
    mode; it is unbound into ``S`` scales (index 0 = full resolution, weighted most). A plain ``(B, C, *s)``
    prediction (eval mode) or a list pass through to MONAI unchanged.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)


def rescale_unit(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, *spatial)`` mapped linearly onto ``[0, 1]`` by its own min and max (nothing
    clipped; a constant image becomes 0): z-scored MR, which has no fixed range, compared with a fused image."""
    flat = x.flatten(2)
    low = flat.amin(dim=2).view(*x.shape[:2], *([1] * (x.dim() - 2)))
    span = (flat.amax(dim=2) - flat.amin(dim=2)).view_as(low)
    return (x - low) / span.clamp_min(torch.finfo(x.dtype).eps)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Forward-difference gradient magnitude of ``x`` ``(B, C, *spatial)``, same shape (zero at far edges)."""
    squared = torch.zeros_like(x)
    for dim in range(2, x.dim()):
        diff = torch.diff(x, dim=dim)
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, 1]
        squared = squared + F.pad(diff, pad) ** 2
    return torch.sqrt(squared + 1e-12)


class FusionLoss(nn.Module):
    """Unsupervised fusion loss: structural similarity to every source plus gradient preservation.

    ``loss = ssim_weight * mean_k(1 - SSIM(fused, source_k))``
    ``+ gradient_weight * L1(|grad fused|, max_k |grad source_k|)``
    (0.7 / 0.3 in the fusion article). SSIM is MONAI's ``SSIMLoss`` (Gaussian window), 2D or 3D from the
    input's rank. Images are expected in ``[0, data_range]``; 0 means the fused image equals every source.

    Args:
        ssim_weight: weight of the SSIM term (>= 0).
        gradient_weight: weight of the gradient term (>= 0).
        data_range: intensity range of the images.
        win_size: SSIM window (odd; must not exceed the smallest spatial size).
        rescale_sources: map each source onto ``[0, data_range]`` by its own min and max first
            (:func:`rescale_unit`), for sources without a fixed range such as z-scored MR.
    """

    def __init__(
        self,
        ssim_weight: float = 0.7,
        gradient_weight: float = 0.3,
        data_range: float = 1.0,
        win_size: int = 7,
        rescale_sources: bool = False,
    ) -> None:
        super().__init__()
        self.rescale_sources = rescale_sources
        self.data_range = data_range
        self.ssim_weight = _check_weight("FusionLoss", "ssim_weight", ssim_weight)
        self.gradient_weight = _check_weight("FusionLoss", "gradient_weight", gradient_weight)
        if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
            raise ValueError(f"FusionLoss: win_size must be an odd positive integer, got {win_size!r}.")
        self.ssim = nn.ModuleDict(
            {str(d): SSIMLoss(spatial_dims=d, data_range=data_range, win_size=win_size) for d in (2, 3)}
        )

    def forward(self, fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Scalar loss for ``fused`` ``(B, 1, *spatial)`` and ``sources`` ``(B, N, *spatial)``."""
        if fused.dim() not in (4, 5) or fused.shape[1] != 1:
            raise ValueError(f"FusionLoss: fused must be (B, 1, H, W[, D]), got shape {tuple(fused.shape)}.")
        if (
            sources.dim() != fused.dim()
            or sources.shape[0] != fused.shape[0]
            or sources.shape[2:] != fused.shape[2:]
        ):
            raise ValueError(
                f"FusionLoss: sources must be (B, N, *spatial) matching fused {tuple(fused.shape)}, "
                f"got {tuple(sources.shape)}."
            )
        sources = sources.to(fused.dtype)
        if self.rescale_sources:
            sources = rescale_unit(sources) * self.data_range
        ssim = self.ssim[str(fused.dim() - 2)]
        ssim_term = torch.stack([ssim(fused, sources[:, k : k + 1]) for k in range(sources.shape[1])]).mean()
        target = gradient_magnitude(sources).amax(dim=1, keepdim=True)
        gradient_term = F.l1_loss(gradient_magnitude(fused), target)
        return self.ssim_weight * ssim_term + self.gradient_weight * gradient_term


class JointFusionSegLoss(nn.Module):
    """``seg_loss(logits, label) + fusion_weight * fusion_loss(fused, sources)`` for ``FusionSegNet``.

    The fused image and the sources come from the call (``fused=``/``sources=``, or ``input`` as the
    ``(logits, fused)`` pair of ``forward_with_fused``) or else from ``network.last_fused`` and
    ``network.last_input``, so a MONAI ``SupervisedTrainer`` calling ``loss(pred, label)`` works unchanged.
    While ``network.stage == "fusion_pretrain"`` only the fusion term is returned.

    Args:
        seg_loss: segmentation loss taking ``(logits, label)``, e.g. :func:`dice_focal_loss`.
        fusion_loss: fusion loss taking ``(fused, sources)``; defaults to :class:`FusionLoss`.
        fusion_weight: weight of the fusion term in the joint stage (>= 0).
        network: the ``FusionSegNet`` whose last forward supplies ``fused`` and ``sources``, or its
            ``DistributedDataParallel`` wrapper (multi-GPU overlay): the attributes are read from ``.module``,
            the module that ran the forward inside DDP's, so the fusion term's gradients reach DDP's reducer.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        fusion_loss: nn.Module | None = None,
        fusion_weight: float = 0.5,
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.fusion_loss = fusion_loss if fusion_loss is not None else FusionLoss()
        self.fusion_weight = _check_weight("JointFusionSegLoss", "fusion_weight", fusion_weight)
        # kept outside the module tree so the loss does not register (or move, or save) the network
        object.__setattr__(self, "network", network)

    def forward(
        self,
        input: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        fused: torch.Tensor | None = None,
        sources: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(input, (tuple, list)):
            input, fused = input
        network = None if self.network is None else unwrap(self.network)
        if fused is None or sources is None:
            if network is None:
                raise ValueError(
                    "JointFusionSegLoss: pass fused= and sources=, or build the loss with network=."
                )
            fused = network.last_fused if fused is None else fused
            sources = network.last_input if sources is None else sources
            if fused.numel() == 0 or sources.numel() == 0:
                raise ValueError(
                    "JointFusionSegLoss: the network has not run a forward pass yet (last_fused is empty)."
                )
        fusion_term = self.fusion_loss(fused, sources)
        if network is not None and getattr(network, "stage", "joint") == "fusion_pretrain":
            return fusion_term
        return self.seg_loss(input, target) + self.fusion_weight * fusion_term
