"""Uncertainty of one prediction from its members (TTA flips, ensemble networks, or the image and its mirror):
per-structure agreement between the members and the predictive entropy inside the predicted foreground; and
temperature scaling of the averaged probabilities.

Members are kept as label maps (uint8 argmax for softmax, one bool map per region for sigmoid), never as
probabilities, so a 512x512x300 CT costs one byte per voxel and member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import torch

from pipeline.core.arrays import slabs
from pipeline.inference.tta import softmax_

__all__ = ["Uncertainty", "member_labels", "summarize_members", "temperature_scaled"]

_EPS = 1e-6
_SLAB_VOXELS = 1 << 20
"""Voxels per slab of the per-voxel steps (1 M: a 3-class float temporary is 12 MB)."""


@dataclass
class Uncertainty:
    """Agreement and entropy of one case (network grid).

    Attributes:
        members: number of predictions compared.
        agreement: structure index (1-based, as the label values; regions in order) -> mean pairwise Dice
            between the members' masks; ``None`` when every member predicts it empty.
        entropy: structure index -> mean predictive entropy inside the structure's predicted mask, normalised
            to [0, 1] (divided by log C for softmax, by log 2 per region); ``None`` when it is empty.
        foreground_entropy: mean normalised entropy inside the whole predicted foreground (``None``: empty).
    """

    members: int
    agreement: dict[int, float | None] = field(default_factory=dict)
    entropy: dict[int, float | None] = field(default_factory=dict)
    foreground_entropy: float | None = None

    def as_dict(self) -> dict:
        return {
            "members": self.members,
            "agreement": {str(k): v for k, v in self.agreement.items()},
            "entropy": {str(k): v for k, v in self.entropy.items()},
            "foreground_entropy": self.foreground_entropy,
        }


def temperature_scaled(
    probs: torch.Tensor, temperature: float, activation: str = "softmax", *, inplace: bool = False
) -> torch.Tensor:
    """Probabilities ``(C, ...)`` rescaled by a temperature: ``softmax(log p / T)`` over classes, or
    ``sigmoid(logit(p) / T)`` per region. Softmax is shift-invariant, so ``log p`` stands for the logits (of an
    averaged ensemble too); labels (argmax, or p > 0.5) never change. ``T == 1`` returns ``probs`` itself;
    ``inplace`` overwrites ``probs`` (no second full-grid map)."""
    if temperature == 1.0:
        return probs
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = probs.clamp_(_EPS, 1 - _EPS) if inplace else probs.clamp(_EPS, 1 - _EPS)
    if activation == "softmax":
        return softmax_(p.log_().div_(temperature), 0)
    return p.logit_().div_(temperature).sigmoid_()


def _slabs(scores: torch.Tensor) -> list[tuple[slice, ...]]:
    """Indices ``(..., *spatial slices)`` of slabs of the spatial axes of ``scores`` ``(C, X, ...)`` of about
    :data:`_SLAB_VOXELS` voxels each (:func:`pipeline.core.arrays.slabs`), for its masks and labels too, so that
    per-voxel temporaries (an int64 argmax, an entropy map) stay slab-sized."""
    return [(..., *index) for _, _, index in slabs(scores[0], _SLAB_VOXELS)]


def member_labels(scores: torch.Tensor, activation: str = "softmax", *, logits: bool = False) -> torch.Tensor:
    """One member's masks from its probabilities ``(C, ...)`` (or, with ``logits``, the logits they come from):
    argmax ``(...)`` uint8 for softmax (slab by slab), ``(C, ...)`` bool (p > 0.5, i.e. logit > 0) for sigmoid
    regions."""
    if activation != "softmax":
        return scores > (0.0 if logits else 0.5)
    labels = torch.empty(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for slab in _slabs(scores):
        labels[slab] = scores[slab].argmax(0)
    return labels


def _masks(labels: torch.Tensor, structures: int, activation: str) -> list[torch.Tensor]:
    if activation == "softmax":
        return [labels == k for k in range(1, structures + 1)]
    return [labels[k] for k in range(structures)]


def _entropy(probs: torch.Tensor, masks: list[torch.Tensor], activation: str) -> list[torch.Tensor]:
    """Per structure, the normalised predictive entropy of ``probs`` ``(C, ...)`` at the voxels of its mask."""
    channels = probs.shape[0]
    if activation == "softmax":
        p = probs.clamp(_EPS, 1.0)
        entropy = (p * p.log()).sum(0).div_(-math.log(max(channels, 2)))
        return [entropy[mask] for mask in masks]
    found = []
    for k, mask in enumerate(masks):
        inside = probs[k][mask]
        p, q = inside.clamp(_EPS, 1.0), (1 - inside).clamp_(_EPS, 1.0)
        found.append(-(p * p.log() + q * q.log()) / math.log(2))
    return found


def summarize_members(
    members: list[torch.Tensor], mean_probs: torch.Tensor, activation: str = "softmax"
) -> Uncertainty:
    """Agreement between ``members`` (from :func:`member_labels`) and entropy of their mean ``mean_probs``
    ``(C, ...)`` inside the predicted structures (the masks of the mean); slab by slab, so no full-grid float map
    is made."""
    channels = mean_probs.shape[0]
    structures = channels - 1 if activation == "softmax" else channels
    pairs = list(combinations(range(len(members)), 2))
    overlap = [[0] * structures for _ in pairs]  # per pair and structure: |a & b|, |a| + |b|
    sizes = [[0] * structures for _ in pairs]
    entropy_sum, entropy_n = [0.0] * structures, [0] * structures
    for slab in _slabs(mean_probs):
        probs = mean_probs[slab]
        member_masks = [_masks(m[slab], structures, activation) for m in members]
        mean_masks = _masks(member_labels(probs, activation), structures, activation)
        for k, values in enumerate(_entropy(probs, mean_masks, activation)):
            entropy_sum[k] += float(values.double().sum())
            entropy_n[k] += values.numel()
        for i, (a, b) in enumerate(pairs):
            for k in range(structures):
                overlap[i][k] += int((member_masks[a][k] & member_masks[b][k]).sum())
                sizes[i][k] += int(member_masks[a][k].sum()) + int(member_masks[b][k].sum())
    result = Uncertainty(members=len(members))
    for k in range(structures):
        dice = [2.0 * overlap[i][k] / sizes[i][k] for i in range(len(pairs)) if sizes[i][k]]
        result.agreement[k + 1] = sum(dice) / len(dice) if dice else None
        result.entropy[k + 1] = entropy_sum[k] / entropy_n[k] if entropy_n[k] else None
    count = sum(entropy_n)
    result.foreground_entropy = sum(entropy_sum) / count if count else None
    return result
