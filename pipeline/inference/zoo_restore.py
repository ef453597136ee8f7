"""The last step of a MONAI model-zoo bundle's postprocessing in clinseg: its label map checked onto the input grid."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor

from pipeline.inference.restore import RestoreToInputd, input_grid, to_input_grid

__all__ = ["GRID_ATOL", "ZooInputGridd"]

logger = logging.getLogger(__name__)

GRID_ATOL = 1e-4
"""Largest difference (mm) between the affine of a zoo bundle's output and the input's for the same grid."""


class ZooInputGridd(RestoreToInputd):
    """A zoo bundle's label map ``(1, X, Y[, Z])`` -> uint8 labels on the grid the loader read.

    The bundle's own ``Invertd`` has usually already brought the map back; that is verified numerically (same
    shape, affine within :data:`GRID_ATOL`). A map on another grid (a bundle without ``Invertd``, or one whose
    inverse misses a step) is resampled onto the input grid by nearest neighbour (clinseg's restore). Values are
    rounded: a zoo ``Invertd`` with ``nearest_interp: false`` after the argmax interpolates labels linearly.

    Args:
        keys: the label maps (``pred``).
        image_key: the preprocessed image, whose meta names the input grid.
        mode: how the bundle's ``Invertd`` interpolates (``"linear"`` or ``"nearest"``), reported in the settings.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", mode: str = "nearest") -> None:
        super().__init__(keys, image_key=image_key, mode=mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        shape, affine = input_grid(image)
        for key in self.key_iterator(d):
            labels = d[key]
            if labels.shape[0] != 1:
                raise ValueError(
                    f"the zoo bundle's postprocessing must end in one label map (1, ...) for {key!r}, got shape "
                    f"{tuple(labels.shape)} (no argmax or threshold step?)"
                )
            values = torch.round(_plain(labels).float())
            if not _on_input_grid(labels, shape, affine):
                logger.info("zoo output %s is not on the input grid; resampled by nearest neighbour", key)
                values = to_input_grid(values, _on_grid(values, labels, image), mode="nearest").as_tensor()
            d[key] = MetaTensor(values.to(torch.uint8), meta={**image.meta, "affine": affine.clone()})
        return d


def _on_input_grid(labels: torch.Tensor, shape: tuple[int, ...], affine: torch.Tensor) -> bool:
    """Whether ``labels`` ``(1, X, Y[, Z])`` has the input grid's shape and an affine within :data:`GRID_ATOL`."""
    if not isinstance(labels, MetaTensor) or tuple(labels.shape[1:]) != shape:
        return False
    got = torch.as_tensor(labels.affine, dtype=torch.float64).cpu()
    return torch.allclose(got, affine, rtol=0.0, atol=GRID_ATOL)


def _on_grid(values: torch.Tensor, labels: torch.Tensor, image: MetaTensor) -> MetaTensor:
    """``values`` as a MetaTensor with the labels' affine (the network grid's when they carry none) and the input
    grid's meta from ``image``."""
    source = labels.affine if isinstance(labels, MetaTensor) else image.affine
    return MetaTensor(values, meta={**image.meta, "affine": torch.as_tensor(source).clone()})


def _plain(values: torch.Tensor) -> torch.Tensor:
    """A detached CPU ``torch.Tensor``."""
    values = values.as_tensor() if isinstance(values, MetaTensor) else torch.as_tensor(values)
    return values.detach().cpu()
