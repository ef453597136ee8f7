"""The marginal loss for partially labelled cases: missing classes are ignored, not trained as background.

A batch marked by :class:`transforms.labels.partial_labels.MarkMissingLabelsd` carries, per sample, the classes its
reference lacks (their voxels are labelled 0 with the background). For such a sample the softmax probabilities
of the missing classes are added to background's before the loss (the marginal loss of Shi et al. 2021):

- cross-entropy term: a 0 voxel scores ``-log(p_background + sum p_missing)``, so predicting a missing class
  there costs nothing, and annotated classes are still learnt exactly (MONAI's focal term is a per-channel sigmoid:
  there the ambiguous terms are left out instead, :class:`MarginalDiceFocalLoss`);
- Dice term: the missing classes' channels are left out for that sample; background's Dice (when
  ``include_background``) compares the merged probability with the 0 voxels.

With no sample marked the base MONAI loss runs unchanged; the marginal formula with nothing missing equals it.
Multiclass (softmax) mode only: a sigmoid (binary or region) loss refuses marked labels.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss

from transforms.labels.partial_labels import split_missing

__all__ = ["MarginalDiceCELoss", "MarginalDiceFocalLoss", "marginal_probabilities"]

_EPS = 1e-8


def marginal_probabilities(logits: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Softmax of ``logits`` ``(B, C, *spatial)`` with each sample's ``missing`` ``(B, C)`` channels added into
    channel 0 and set to 0."""
    probs = torch.softmax(logits.float(), dim=1)
    keep = (~missing).to(probs.dtype).view(*missing.shape, *([1] * (logits.dim() - 2)))
    merged = (probs * (1 - keep)).sum(dim=1, keepdim=True)
    out = probs * keep
    return torch.cat([out[:, :1] + merged, out[:, 1:]], dim=1)


def _marginal_dice(dice: DiceLoss, probs: torch.Tensor, labels: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Mean Dice loss over each sample's annotated channels (``dice``'s include_background and batch kept)."""
    loss = DiceLoss(
        include_background=dice.include_background, to_onehot_y=True, softmax=False, batch=dice.batch,
        smooth_nr=dice.smooth_nr, smooth_dr=dice.smooth_dr, squared_pred=dice.squared_pred,
        jaccard=dice.jaccard, weight=dice.class_weight, reduction="none",
    )(probs, labels).flatten(1)  # fmt: skip  # (B, C') or (1, C') with batch
    annotated = ~missing[:, (0 if dice.include_background else 1) :]
    if dice.batch:
        annotated = annotated.all(dim=0, keepdim=True)  # a channel missing in any sample: not summed over the batch
    return loss[annotated].mean() if annotated.any() else loss.sum() * 0


def _marginal_terms(owner, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(probs, labels, onehot, missing)`` of a marked batch, or raise for a sigmoid loss."""
    if not owner.dice.softmax:
        raise ValueError(
            f"{type(owner).__name__}: labels with missing classes need mode='multiclass' (softmax); a sigmoid "
            "loss cannot merge a missing class into background"
        )
    labels, missing = split_missing(target, logits.shape[1])
    probs = marginal_probabilities(logits, missing)
    onehot = torch.zeros_like(probs).scatter_(1, labels.long(), 1.0)
    return probs, labels, onehot, missing


class MarginalDiceCELoss(DiceCELoss):
    """MONAI ``DiceCELoss`` that ignores each sample's missing classes (module docstring); ``forward`` takes
    logits ``(B, C, *spatial)`` and labels ``(B, 1, *spatial)``, marked or not."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.marginal(input, target) if bool((target < 0).any()) else super().forward(input, target)

    def marginal(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The marginal loss, marked or not (equal to ``DiceCELoss`` when nothing is missing)."""
        probs, labels, onehot, missing = _marginal_terms(self, input, target)
        log_p = probs.clamp_min(_EPS).log()
        weight = self.cross_entropy.weight
        w = onehot if weight is None else onehot * weight.to(probs).view(1, -1, *([1] * (probs.dim() - 2)))
        ce = -(w * log_p).sum() / w.sum().clamp_min(_EPS)  # nn.CrossEntropyLoss' weighted mean
        return self.lambda_dice * _marginal_dice(self.dice, probs, labels, missing) + self.lambda_ce * ce


class MarginalDiceFocalLoss(DiceFocalLoss):
    """MONAI ``DiceFocalLoss`` that ignores each sample's missing classes: the Dice term as the module docstring;
    MONAI's focal term is per-channel sigmoid, so there the ambiguous terms (background's and the missing
    classes' channels on the sample's 0 voxels) are left out of its mean instead of merged."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.marginal(input, target) if bool((target < 0).any()) else super().forward(input, target)

    def marginal(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss with ambiguous terms left out, marked or not (equal to ``DiceFocalLoss`` when nothing is
        missing)."""
        probs, labels, onehot, missing = _marginal_terms(self, input, target)
        f = self.focal
        elementwise = FocalLoss(
            include_background=f.include_background, gamma=f.gamma, alpha=f.alpha, weight=f.weight,
            use_softmax=f.use_softmax, reduction="none",
        )(input, onehot)  # fmt: skip
        view = (*missing.shape, *([1] * (input.dim() - 2)))
        background = (torch.arange(input.shape[1], device=input.device) == 0) & missing.any(dim=1, keepdim=True)
        ambiguous = (labels == 0) & (missing | background).view(view)  # only in samples that lack a class
        keep = ~ambiguous[:, (0 if f.include_background else 1) :].expand_as(elementwise)
        focal = elementwise[keep].mean() if keep.any() else elementwise.sum() * 0
        return self.lambda_dice * _marginal_dice(self.dice, probs, labels, missing) + self.lambda_focal * focal
