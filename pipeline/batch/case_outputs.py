"""The files written for one segmented case, one per enabled entry of :data:`pipeline.outputs.registry.OUTPUTS`.

Every file is written atomically; the caller marks the case complete only after all of them exist, so a killed run
never leaves a case that looks finished. A DICOM output (SEG, RTSTRUCT) that cannot be written is a warning of the
case, not its failure: the mask stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from pipeline.batch.report import error_text
from pipeline.inference.case import Segmentation
from pipeline.outputs.registry import CaseData, OutputOptions, OutputSkipped, enabled_outputs

__all__ = ["CaseOutputs", "write_case_outputs"]

logger = logging.getLogger(__name__)

_AFFINE_TOL_MM = 1e-3


@dataclass(frozen=True)
class CaseOutputs:
    """What :func:`write_case_outputs` wrote: file names (relative to the case folder), volume rows, warnings,
    and the seconds each output took (by output name, e.g. ``mask``, ``dicom_seg``)."""

    names: list[str]
    volumes: list[dict]
    warnings: list[str]
    seconds: dict[str, float]


def _on_input_grid(seg: MetaTensor, image: MetaTensor) -> np.ndarray:
    """The input's affine, after checking that the prediction lies on the input grid."""
    if tuple(seg.shape[1:]) != tuple(image.shape[1:]):
        raise RuntimeError(
            f"prediction shape {tuple(seg.shape[1:])} differs from the input's {tuple(image.shape[1:])}"
        )
    affine = image.affine.numpy()
    if not np.allclose(seg.affine.numpy(), affine, atol=_AFFINE_TOL_MM):
        raise RuntimeError(
            "prediction affine differs from the input's; refusing to write it off the input grid"
        )
    return affine


def write_case_outputs(
    segmentation: Segmentation,
    image: MetaTensor,
    case_dir: Path,
    labels: Mapping[int, str],
    *,
    kind: str,
    options: OutputOptions,
    display_window: Sequence[float] | None = None,
    algorithm_name: str = "clinseg",
) -> CaseOutputs:
    """Write a case's files into ``case_dir`` (which must exist).

    Args:
        segmentation: labels ``(1, X, Y[, Z])`` (and probabilities) on the input grid.
        image: the loaded input ``(C, X, Y[, Z])`` on its own grid (HU for CT); channel 0 feeds the
            intensity statistics and the preview; DICOM inputs carry ``meta["dicom_files"]`` in slice order.
        case_dir: the case's output folder.
        labels: label id -> structure name (the bundle's class names).
        kind: ``"dicom"`` or ``"nifti"``.
        options: optional outputs.
        display_window: ``(level, width)`` for the preview (HU for CT); default a percentile window.
        algorithm_name: recorded in the DICOM outputs.

    Returns:
        The written names, the volume rows (``voxels``, ``volume_ml``, mean/std intensity per label) and the
        warnings (a DICOM output that could not be written, and why).
    """
    case = CaseData(
        segmentation, image, _on_input_grid(segmentation.labels, image), labels, case_dir, kind,
        display_window, algorithm_name,
    )  # fmt: skip
    names: list[str] = []
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    for spec in enabled_outputs(options, kind):
        start = time.perf_counter()
        try:
            spec.writer(case, case_dir / spec.file_name)
        except OutputSkipped as skipped:
            logger.warning("%s: no %s: %s", case_dir.name, spec.file_name, skipped)
            continue
        except Exception as error:
            if not spec.dicom_only:
                raise
            logger.debug("%s: %s failed", case_dir.name, spec.file_name, exc_info=True)
            warnings.append(f"no {spec.file_name} ({spec.name}): {error_text(error)}")
            continue
        finally:
            seconds[spec.name] = time.perf_counter() - start
        names.append(spec.file_name)
    return CaseOutputs(names, case.volumes, warnings, seconds)
