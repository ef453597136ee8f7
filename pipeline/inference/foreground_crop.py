"""The body's bounding box on the network grid, aligned with the sliding window's patch grid.

Cropping after resampling (not before) keeps the network grid identical to the uncropped run, and aligning
the box to the window stride makes the patches inside it the very patches the uncropped run evaluates, so
inside the body the probabilities are unchanged; only air outside the box is skipped (and set to background).
MONAI's ``CropForegroundd`` crops before resampling, which shifts the resampled grid by a sub-voxel amount.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.inference.case import LoadedCase
from pipeline.inference.options import InferenceOptions
from transforms.geometry.slab_resample import voxel_map

__all__ = ["body_box", "case_box"]

logger = logging.getLogger(__name__)


def _input_box(image: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (first, last) voxel indices of ``image > threshold`` over channel 0, or None when empty."""
    mask = torch.as_tensor(image)[0] > threshold
    firsts, lasts = [], []
    for axis in range(mask.ndim):
        hit = torch.nonzero(mask.any(dim=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.numel() == 0:
            return None
        firsts.append(int(hit[0]))
        lasts.append(int(hit[-1]))
    return np.asarray(firsts, float), np.asarray(lasts, float)


def _aligned(start: int, stop: int, size: int, roi: int, stride: int) -> tuple[int, int]:
    """[start, stop) grown to patch-grid positions: start a multiple of ``stride``, length ``roi + k * stride``."""
    if roi >= size:
        return 0, size
    start = (start // stride) * stride
    length = max(stop - start, roi)
    stop = start + roi + math.ceil((length - roi) / stride) * stride
    if stop > size - roi:  # reaches the uncropped run's last patch (at size - roi, off the stride grid): keep it
        return min(start, size - roi), size
    return start, stop


def body_box(
    image: torch.Tensor,
    image_affine: torch.Tensor | np.ndarray,
    grid_affine: torch.Tensor | np.ndarray,
    grid_shape: Sequence[int],
    *,
    threshold: float,
    margin: int,
    roi_size: Sequence[int],
    overlap: float | Sequence[float],
) -> tuple[slice, ...] | None:
    """Box on the network grid covering every voxel of ``image`` above ``threshold``, plus ``margin`` voxels.

    Args:
        image: the loaded input ``(C, X, Y[, Z])`` on its own grid (HU for CT); channel 0 is thresholded.
        image_affine: its voxel -> world affine.
        grid_affine: the network grid's voxel -> world affine (the preprocessed image's).
        grid_shape: the network grid's spatial shape.
        threshold: foreground intensity, e.g. -500 HU for the body.
        margin: voxels of the network grid added on every side.
        roi_size: sliding-window patch size; overlap: its overlap fraction (per axis or one value).

    Returns:
        One slice per spatial axis, or ``None`` when there is no foreground or the box is the whole grid.
    """
    d = len(grid_shape)
    found = _input_box(image, threshold)
    if found is None:
        return None
    first, last = found
    xform = voxel_map(grid_affine, image_affine, d)  # input voxel -> network voxel
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(first - 0.5, last + 0.5))]).T
    mapped = (xform @ corners)[:d]
    overlaps = [float(overlap)] * d if np.isscalar(overlap) else [float(v) for v in overlap]
    box = []
    for axis, size in enumerate(grid_shape):
        roi = min(int(roi_size[axis]), size)
        stride = max(1, int(roi * (1 - overlaps[axis])))
        start = max(0, math.floor(mapped[axis].min()) - margin)
        stop = min(size, math.ceil(mapped[axis].max()) + margin + 1)
        box.append(slice(*_aligned(start, stop, size, roi, stride)))
    if all(s.start == 0 and s.stop == n for s, n in zip(box, grid_shape)):
        return None
    logger.debug("foreground box on the network grid %s of %s", [(s.start, s.stop) for s in box], tuple(grid_shape))
    return tuple(box)


def case_box(case: LoadedCase, options: InferenceOptions) -> tuple[slice, ...] | None:
    """The body box of a loaded case on its network grid (:func:`body_box` with the options' threshold, margin,
    ``roi_size`` and ``overlap``), or ``None`` when cropping is off, nothing is above ``foreground_hu``, or the
    box is the whole grid. ``options`` must be resolved (a Predictor's ``options``)."""
    if not options.crop_foreground:
        return None
    reference = case.read[case.keys[0]]  # as stored (int16 where exact): LoadedCase.inputs would expand it
    return body_box(
        reference,
        reference.affine,
        case.network_affine,
        case.data[case.keys[0]].shape[1:],
        threshold=options.foreground_hu,
        margin=options.crop_margin,
        roi_size=options.roi_size,
        overlap=options.overlap,
    )
