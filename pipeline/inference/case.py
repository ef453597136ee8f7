"""What the Predictor hands out: a loaded case (network-grid data and the images as read) and its segmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import MetaTensor

from pipeline.core.arrays import slabs
from pipeline.inference.uncertainty import Uncertainty

__all__ = ["LoadedCase", "Segmentation", "compact_image"]

_INT16 = torch.iinfo(torch.int16)


def compact_image(image: MetaTensor) -> MetaTensor:
    """``image`` as int16 when that is exact (float32 whole numbers in int16's range, e.g. CT in HU: half the
    memory), else ``image`` itself; checked slab by slab (:func:`~pipeline.core.arrays.slabs`), the memory layout
    kept."""
    if image.dtype != torch.float32:
        return image
    values = image.as_tensor()
    for _, _, index in slabs(values):
        part = values[index]
        if part.numel() and not (
            _INT16.min <= float(part.min()) and float(part.max()) <= _INT16.max and torch.equal(part, part.round())
        ):
            return image
    return _retyped(image, torch.int16)


def _retyped(image: MetaTensor, dtype: torch.dtype) -> MetaTensor:
    """``image`` converted to ``dtype`` with its meta and operations; ``Tensor.to`` keeps the strides (a Fortran
    layout too) and makes no temporary beyond the result."""
    out = image.as_tensor().to(dtype)
    return MetaTensor(out, meta=dict(image.meta), applied_operations=list(image.applied_operations))


@dataclass
class LoadedCase:
    """One case after the bundle's preprocessing.

    Attributes:
        data: the preprocessed dict; ``data[key]`` is each input ``(1, x, y[, z])`` on the network grid.
        read: each input ``(1, X, Y[, Z])`` as read, stored int16 where exact (:func:`compact_image`): while the
            network runs, a 512x512x300 CT holds 157 MB instead of 315 MB. Read them through :attr:`inputs`.
        keys: the bundle's input keys, the output grid's first.
        warnings: why the images may not suit the bundle (modality checks); the case is still segmented.
        seconds: time per step of loading (``read``, ``preprocess``: the bundle's transforms, resampling
            included).
    """

    data: dict[str, Any]
    read: dict[str, MetaTensor]
    keys: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def inputs(self) -> dict[str, MetaTensor]:
        """Each input ``(1, X, Y[, Z])`` as read, on its own grid (HU for CT), before preprocessing, float32 (an
        int16-stored one is expanded on first access, once)."""
        for key, image in self.read.items():
            if image.dtype == torch.int16:
                self.read[key] = _retyped(image, torch.float32)
        return self.read

    @property
    def reference(self) -> MetaTensor:
        """The first input as read ``(1, X, Y[, Z])``: its grid is the output grid; its meta holds the source
        (``dicom_files`` for DICOM)."""
        return self.inputs[self.keys[0]]

    @property
    def network_input(self) -> torch.Tensor:
        """The network's input ``(1, C, x, y[, z])``: the inputs stacked as channels in ``keys`` order (one input:
        a view, no copy)."""
        if len(self.keys) == 1:
            return torch.as_tensor(self.data[self.keys[0]])[None]
        return torch.cat([torch.as_tensor(self.data[k]) for k in self.keys], dim=0)[None]

    @property
    def network_affine(self) -> torch.Tensor:
        """Voxel -> world of the network grid."""
        return self.data[self.keys[0]].affine

    def with_prediction(self, pred: torch.Tensor, key: str = "pred") -> dict[str, Any]:
        """The preprocessed dict plus ``pred`` on the network grid, as MONAI's evaluator hands it to its
        ``postprocessing``."""
        plain = pred.as_tensor() if isinstance(pred, MetaTensor) else pred
        return {**self.data, key: MetaTensor(plain, affine=self.network_affine.clone())}


@dataclass
class Segmentation:
    """A case's result on its input grid.

    Attributes:
        labels: label map ``(1, X, Y[, Z])`` uint8, affine equal to the input's.
        probabilities: class probabilities ``(C, X, Y[, Z])`` float32 when asked for, else ``None``.
        seconds: time per step (``inference``: the network(s) with the sliding window, TTA and ensemble;
            ``restore``: the postprocessing, back onto the input grid and the label clean-up).
        uncertainty: agreement between members and entropy (``InferenceOptions.uncertainty``), else ``None``.
        inputs: the case's images as read (:attr:`LoadedCase.inputs`), for checks in the scan's own units.
    """

    labels: MetaTensor
    probabilities: MetaTensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    uncertainty: Uncertainty | None = None
    inputs: dict[str, MetaTensor] = field(default_factory=dict)
