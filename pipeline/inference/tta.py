"""Mirror test-time augmentation: average probabilities (softmax over classes, or sigmoid per region) over flips
of the spatial axes."""

from __future__ import annotations

import itertools

import torch

__all__ = ["ACTIVATIONS", "activate", "flip_combinations", "softmax_"]

ACTIVATIONS = ("softmax", "sigmoid")


def activate(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Probabilities of logits ``(B, C, ...)`` in float32: softmax over the classes (``dim=1``), or a sigmoid
    per channel (region outputs).

    Float32 logits are overwritten (no second full-grid map: 141 MB for 3 classes on a 256x256x180 grid); pass a
    copy to keep them."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    logits = logits.float()
    return logits.sigmoid_() if activation == "sigmoid" else softmax_(logits, 1)


def softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.softmax(x, dim)`` written into ``x``: its own steps (shift by the maximum, exp, normalise)."""
    x.sub_(x.amax(dim=dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim=dim, keepdim=True))


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of a batch ``(B, C, X, Y[, Z])`` as tensor dims, the empty one first."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
