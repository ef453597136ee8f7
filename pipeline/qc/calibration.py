"""Temperature scaling fitted on the validation split, its calibration error before and after, and what normal
uncertainty looks like on validation cases (the norms QC compares each case with).

One temperature ``T`` divides the log-probabilities (:func:`pipeline.inference.uncertainty.temperature_scaled`),
fitted by minimising the voxels' negative log-likelihood (Guo et al. 2017; nnU-Net's issue #2763 asks for it).
Voxels are sampled uniformly on each case's own grid. The expected calibration error is MONAI's
``CalibrationErrorMetric`` (15 bins, mean over classes, background included). Labels never change with ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric
from scipy.optimize import minimize_scalar

from pipeline.inference.predictor import Predictor
from pipeline.inference.restore import to_input_grid
from pipeline.inference.uncertainty import temperature_scaled
from pipeline.qc.reference import stats
from transforms.io.scan import load_scan

__all__ = ["calibrate_on_validation", "expected_calibration_error", "fit_temperature"]

_BINS = 15
_EPS = 1e-6


def _nll(probs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    scaled = temperature_scaled(probs, temperature).clamp_min(_EPS)
    return float(-scaled.gather(0, labels[None]).log().mean())


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood of ``labels`` ``(N,)`` (class
    indices) under ``probs`` ``(C, N)`` (softmax probabilities)."""
    labels = labels.long()
    found = minimize_scalar(
        lambda log_t: _nll(probs, labels, math.exp(log_t)), bounds=(math.log(0.05), math.log(20.0)),
        method="bounded", options={"xatol": 1e-3},
    )  # fmt: skip
    return float(math.exp(found.x))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """MONAI's expected calibration error of ``probs`` ``(C, N)`` against ``labels`` ``(N,)``, mean over classes."""
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[0]).T.float()
    metric = CalibrationErrorMetric(num_bins=_BINS, include_background=True, calibration_reduction="expected")
    metric(y_pred=probs[None].float(), y=onehot[None])
    return float(metric.aggregate())


def calibrate_on_validation(
    predictor: Predictor,
    entries: Sequence[Mapping[str, Any]],
    *,
    label_key: str = "label",
    voxels_per_case: int = 50_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the temperature on ``entries`` (validation cases with labels) and measure the uncertainty norms.

    The predictor runs uncalibrated (its temperature is set back afterwards). Returns ``{"temperature",
    "calibration": {"ece_before", "ece_after", "nll_before", "nll_after", "cases", "voxels"},
    "uncertainty": {"agreement": {label: stats}, "foreground_entropy": stats}}``. Region (sigmoid) models
    keep temperature 1: their calibration is not fitted here.
    """
    rng = np.random.default_rng(seed)
    kept_temperature, predictor.temperature = predictor.temperature, 1.0
    sampled, truth, foreground, agreements = [], [], [], {}
    try:
        for entry in entries:
            case = predictor.load({k: entry[k] for k in predictor.input_keys})
            probs, uncertainty = predictor.probabilities_and_uncertainty(case)
            label_grid = torch.as_tensor(load_scan(entry[label_key], label=True, spatial_dims=probs.ndim - 1))
            restored = to_input_grid(probs, case.data[case.keys[0]]).as_tensor()
            if tuple(restored.shape[1:]) != tuple(label_grid.shape[1:]):
                raise ValueError(
                    f"case {entry.get('case')!r}: label {entry[label_key]} has shape {tuple(label_grid.shape[1:])}, "
                    f"the image {tuple(restored.shape[1:])}"
                )
            flat = restored.reshape(restored.shape[0], -1)
            pick = torch.as_tensor(rng.choice(flat.shape[1], min(voxels_per_case, flat.shape[1]), replace=False))
            sampled.append(flat[:, pick])
            truth.append(label_grid.reshape(-1)[pick].long())
            fg = probs.argmax(0) > 0 if predictor.activation == "softmax" else (probs > 0.5).any(0)
            foreground.append(probs[:, fg])
            if uncertainty is not None:
                for k, v in uncertainty.agreement.items():
                    agreements.setdefault(str(k), []).append(v)
    finally:
        predictor.temperature = kept_temperature
    probs_all, labels_all = torch.cat(sampled, dim=1), torch.cat(truth)
    temperature = 1.0
    if predictor.activation == "softmax":
        labels_all = labels_all.clamp(0, probs_all.shape[0] - 1)
        temperature = fit_temperature(probs_all, labels_all)
    after = temperature_scaled(probs_all, temperature, predictor.activation)
    entropies = [_mean_entropy(temperature_scaled(p, temperature, predictor.activation)) for p in foreground]
    calibration = {"cases": len(entries), "voxels": int(labels_all.numel()), "bins": _BINS}
    if predictor.activation == "softmax":
        calibration.update(
            ece_before=expected_calibration_error(probs_all, labels_all),
            ece_after=expected_calibration_error(after, labels_all),
            nll_before=_nll(probs_all, labels_all, 1.0),
            nll_after=_nll(probs_all, labels_all, temperature),
        )
    return {
        "temperature": temperature,
        "calibration": calibration,
        "uncertainty": {
            "agreement": {k: stats(v) for k, v in agreements.items()},
            "foreground_entropy": stats(entropies),
        },
    }


def _mean_entropy(probs: torch.Tensor) -> float | None:
    """Mean normalised entropy (by log C) of probabilities ``(C, N)``; ``None`` for no voxel."""
    if probs.shape[1] == 0:
        return None
    p = probs.clamp(_EPS, 1.0)
    return float((-(p * p.log()).sum(0) / math.log(max(probs.shape[0], 2))).mean())
