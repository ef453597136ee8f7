"""Metric handlers for validation, configured for per-class reporting."""

from __future__ import annotations

from collections.abc import Sequence

from monai.handlers import MeanDice, from_engine


def per_class_dice(
    class_names: Sequence[str], prefix: str = "val_dice_", include_background: bool = False
) -> MeanDice:
    """A MONAI ``MeanDice`` that reports one scalar per foreground class, e.g. ``val_dice_organ``.

    Expects one-hot ``pred`` and ``label`` of shape (B, 1 + len(class_names), H, W[, D]), or with
    ``include_background`` (region masks, no background channel) (B, len(class_names), H, W[, D]); the dict
    result is flattened into ``engine.state.metrics`` by ignite, so MLflow and the epoch summary see plain scalars.
    """
    if not class_names:
        raise ValueError("class_names must name at least one foreground class")
    return MeanDice(
        include_background=include_background,
        reduction="mean_batch",
        return_with_label=[f"{prefix}{name}" for name in class_names],
        output_transform=from_engine(["pred", "label"]),
    )
