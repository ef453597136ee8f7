"""Mirror test-time augmentation: average probabilities (softmax over classes, or sigmoid per region) over flips
of the spatial axes."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

__all__ = ["ACTIVATIONS", "activate", "flip_combinations", "mirror_probabilities"]

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


@torch.no_grad()
def mirror_probabilities(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, activation: str = "softmax"
) -> torch.Tensor:
    """Mean probabilities over the ``2**spatial_dims`` mirrored copies of ``image``, each flipped back.

    Args:
        logits_fn: maps a batch ``(1, C_in, X, Y[, Z])`` to logits ``(1, C, X, Y[, Z])`` (e.g. a sliding window).
        image: ``(1, C_in, X, Y[, Z])``.
        activation: ``"softmax"`` (classes) or ``"sigmoid"`` (regions), as :func:`activate`.

    Returns:
        ``(C, X, Y[, Z])`` float32 probabilities on CPU.
    """
    if image.ndim not in (4, 5) or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, X, Y[, Z]), got shape {tuple(image.shape)}")
    flips = flip_combinations(image.ndim - 2)
    total = None
    for dims in flips:
        x = torch.flip(image, dims) if dims else image
        probs = activate(logits_fn(x), activation)
        probs = (torch.flip(probs, dims) if dims else probs)[0].cpu()
        total = probs if total is None else total.add_(probs)
    return total.div_(len(flips))
