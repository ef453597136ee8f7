"""Mirror test-time augmentation: average probabilities (softmax over classes, or sigmoid per region) over flips
of the spatial axes."""

from __future__ import annotations

import itertools

import torch

__all__ = ["ACTIVATIONS", "activate", "flip_combinations"]

ACTIVATIONS = ("softmax", "sigmoid")


def activate(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Probabilities of logits ``(B, C, ...)`` in float32: softmax over the classes (``dim=1``), or a sigmoid
    per channel (region outputs)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    logits = logits.float()
    return torch.softmax(logits, dim=1) if activation == "softmax" else torch.sigmoid(logits)


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a batch ``(B, C, X, Y[, Z])`` as tensor dims, the empty one first."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
