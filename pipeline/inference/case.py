"""What the Predictor hands out: a loaded case (network-grid data and the images as read) and its segmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from monai.data import MetaTensor

from pipeline.inference.uncertainty import Uncertainty

__all__ = ["LoadedCase", "Segmentation"]


@dataclass
class LoadedCase:
    """One case after the bundle's preprocessing.

    Attributes:
        data: the preprocessed dict; ``data[key]`` is each input ``(1, x, y[, z])`` on the network grid.
        inputs: each input ``(1, X, Y[, Z])`` as read, on its own grid (HU for CT), before preprocessing.
        keys: the bundle's input keys, the output grid's first.
        warnings: why the images may not suit the bundle (modality checks); the case is still segmented.
        seconds: time per step of loading (``read``, ``preprocess``: the bundle's transforms, resampling
            included).
    """

    data: dict[str, Any]
    inputs: dict[str, MetaTensor]
    keys: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reference(self) -> MetaTensor:
        """The first input as read ``(1, X, Y[, Z])``: its grid is the output grid; its meta holds the source
        (``dicom_files`` for DICOM)."""
        return self.inputs[self.keys[0]]

    @property
    def network_input(self) -> torch.Tensor:
        """The network's input ``(1, C, x, y[, z])``: the inputs stacked as channels in ``keys`` order."""
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
