"""The bundle's ``postprocessing`` step back onto the input grid, run alike by MONAI's evaluator and the Predictor."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from transforms.geometry.slab_resample import argmax_labels, resample_slabwise
from transforms.labels.regions import RegionsToLabels

__all__ = ["RESTORE_MODES", "RestoreToInputd", "input_grid", "to_input_grid"]

RESTORE_MODES = ("linear", "nearest")


def input_grid(image: MetaTensor) -> tuple[tuple[int, ...], torch.Tensor]:
    """(spatial shape, affine) of the grid ``image`` was read on: the loader's ``spatial_shape`` and
    ``original_affine`` meta, which the preprocessing's spatial transforms leave as they are."""
    meta: Mapping[str, Any] = image.meta
    if "spatial_shape" not in meta or "original_affine" not in meta:
        raise ValueError("the image's meta lacks the loader's spatial_shape and original_affine")
    shape = tuple(int(v) for v in torch.as_tensor(meta["spatial_shape"]).reshape(-1).tolist())
    return shape, torch.as_tensor(meta["original_affine"], dtype=torch.float64).cpu()


def to_input_grid(
    values: torch.Tensor,
    image: MetaTensor,
    *,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mode: str = "bilinear",
) -> MetaTensor:
    """``values`` ``(C, x, y[, z])`` on ``image``'s (network) grid resampled slab by slab onto the grid ``image`` was
    read on (:func:`transforms.geometry.slab_resample.resample_slabwise`), as a MetaTensor with ``image``'s meta and
    the input affine; ``reduce`` (e.g. an argmax) applies per slab."""
    shape, affine = input_grid(image)
    out = resample_slabwise(_plain(values), image.affine, shape, affine, mode=mode, reduce=reduce)
    return MetaTensor(out, meta={**image.meta, "affine": affine.clone()})


class RestoreToInputd(MapTransform):
    """Class probabilities ``(C, x, y[, z])`` on the network grid -> label map ``(1, X, Y[, Z])`` uint8 on the
    input's own grid (the shape and affine the loader read), slab by slab so no full-resolution float map is held.

    ``mode="linear"``: argmax of the linearly resampled probabilities (as MONAI's ``Invertd`` +
    ``AsDiscreted(argmax)``); ``"nearest"``: argmax on the network grid, resampled by nearest neighbour
    (staircase boundaries). With ``regions`` the probabilities are per region (sigmoid, ``(R, x, y[, z])``) and
    :class:`transforms.labels.regions.RegionsToLabels` takes the argmax's place (innermost region > 0.5).

    Args:
        keys: the probabilities (``pred``).
        image_key: the preprocessed image whose grid the probabilities lie on (its meta names the input grid).
        mode: ``"linear"`` or ``"nearest"``.
        regions: label values per region, outermost first, for region outputs; ``None`` for class outputs.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        mode: str = "linear",
        regions: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(keys)
        if mode not in RESTORE_MODES:
            raise ValueError(f"restore mode must be one of {RESTORE_MODES}, got {mode!r}")
        self.image_key = image_key
        self.mode = mode
        self.to_labels: Callable[[torch.Tensor], torch.Tensor] = (
            argmax_labels if regions is None else RegionsToLabels(regions)
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            if self.mode == "nearest":
                labels = to_input_grid(self.to_labels(_plain(d[key])).float(), image, mode="nearest")
                d[key] = labels.to(torch.uint8)
            else:
                d[key] = to_input_grid(d[key], image, reduce=self.to_labels)
        return d


def _plain(values: torch.Tensor) -> torch.Tensor:
    """A detached CPU ``torch.Tensor`` (no MetaTensor bookkeeping in the resampling)."""
    values = values.as_tensor() if isinstance(values, MetaTensor) else torch.as_tensor(values)
    return values.detach().cpu()
