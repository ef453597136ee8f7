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

__all__ = ["Uncertainty", "member_labels", "summarize_members", "temperature_scaled"]

_EPS = 1e-6


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


def temperature_scaled(probs: torch.Tensor, temperature: float, activation: str = "softmax") -> torch.Tensor:
    """Probabilities ``(C, ...)`` rescaled by a temperature: ``softmax(log p / T)`` over classes, or
    ``sigmoid(logit(p) / T)`` per region. Softmax is shift-invariant, so ``log p`` stands for the logits (of an
    averaged ensemble too); labels (argmax, or p > 0.5) never change. ``T == 1`` returns ``probs`` itself."""
    if temperature == 1.0:
        return probs
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = probs.clamp(_EPS, 1 - _EPS)
    if activation == "softmax":
        return torch.softmax(p.log_() / temperature, dim=0)
    return torch.sigmoid(torch.logit(p) / temperature)


def member_labels(probs: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """One member's masks from its probabilities ``(C, ...)``: argmax ``(...)`` uint8 for softmax, ``(C, ...)``
    bool (p > 0.5) for sigmoid regions."""
    if activation == "softmax":
        return probs.argmax(0).to(torch.uint8)
    return probs > 0.5


def _masks(labels: torch.Tensor, structures: int, activation: str) -> list[torch.Tensor]:
    if activation == "softmax":
        return [labels == k for k in range(1, structures + 1)]
    return [labels[k] for k in range(structures)]


def _dice(a: torch.Tensor, b: torch.Tensor) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def summarize_members(
    members: list[torch.Tensor], mean_probs: torch.Tensor, activation: str = "softmax"
) -> Uncertainty:
    """Agreement between ``members`` (from :func:`member_labels`) and entropy of their mean ``mean_probs``
    ``(C, ...)`` inside the predicted structures (the masks of the mean)."""
    channels = mean_probs.shape[0]
    structures = channels - 1 if activation == "softmax" else channels
    mean_masks = _masks(member_labels(mean_probs, activation), structures, activation)
    p = mean_probs.clamp(_EPS, 1.0)
    if activation == "softmax":
        entropy = -(p * p.log()).sum(0) / math.log(max(channels, 2))
        per_structure = [entropy] * structures
    else:
        q = (1 - mean_probs).clamp(_EPS, 1.0)
        per_structure = list(-(p * p.log() + q * q.log()) / math.log(2))
    result = Uncertainty(members=len(members))
    weighted, count = 0.0, 0
    member_masks = [_masks(m, structures, activation) for m in members]
    for k in range(structures):
        pairs = [_dice(a[k], b[k]) for a, b in combinations(member_masks, 2)]
        pairs = [d for d in pairs if d is not None]
        result.agreement[k + 1] = sum(pairs) / len(pairs) if pairs else None
        mask = mean_masks[k]
        n = int(mask.sum())
        result.entropy[k + 1] = float(per_structure[k][mask].mean()) if n else None
        if n:
            weighted += float(per_structure[k][mask].sum())
            count += n
    result.foreground_entropy = weighted / count if count else None
    return result
