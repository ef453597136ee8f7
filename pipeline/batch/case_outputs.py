"""The files written for one segmented case: NIfTI mask, DICOM SEG, RTSTRUCT, probabilities, preview, volumes.

Every file is written atomically (``pipeline.core.atomic``); the caller marks the case complete only after all of
them exist, so a killed run never leaves a case that looks finished.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from pipeline.core.atomic import atomic_write_json
from pipeline.outputs.dicom_seg import write_dicom_seg
from pipeline.inference.case import Segmentation
from pipeline.outputs.preview import render_preview
from pipeline.outputs.rtstruct import write_rtstruct
from pipeline.outputs.volumetry import structure_volumes
from pipeline.outputs.nifti import write_mask_nifti, write_probabilities_nifti
from pipeline.outputs.save_seg import SEG_NAME

__all__ = [
    "DICOM_SEG_NAME",
    "PREVIEW_NAME",
    "PROBABILITIES_NAME",
    "RTSTRUCT_NAME",
    "SEG_NAME",
    "VOLUMES_NAME",
    "OutputOptions",
    "required_outputs",
    "write_case_outputs",
]

logger = logging.getLogger(__name__)

DICOM_SEG_NAME = "seg.dcm"
RTSTRUCT_NAME = "rtstruct.dcm"
PROBABILITIES_NAME = "probabilities.nii.gz"
PREVIEW_NAME = "preview.png"
VOLUMES_NAME = "volumes.json"
_AFFINE_TOL_MM = 1e-3
_SLAB = 32  # slices per slab for the volume statistics


@dataclass(frozen=True)
class OutputOptions:
    """Which optional files a case gets.

    Attributes:
        dicom_seg: a DICOM SEG ``seg.dcm`` when the input is DICOM (a single-frame series or one enhanced
            multi-frame file).
        rtstruct: an RT Structure Set ``rtstruct.dcm`` (contours per slice, for radiotherapy systems) when the
            input is a single-frame DICOM series.
        probabilities: ``probabilities.nii.gz`` (classes on the last axis, quantised to uint8).
        preview: ``preview.png``, three orthogonal slices with the mask overlaid.
    """

    dicom_seg: bool = True
    rtstruct: bool = False
    probabilities: bool = False
    preview: bool = True


def required_outputs(options: OutputOptions) -> list[str]:
    """Files every finished case has under these options (``seg.dcm``, ``rtstruct.dcm`` come on top for DICOM
    inputs)."""
    names = [SEG_NAME, VOLUMES_NAME]
    if options.preview:
        names.append(PREVIEW_NAME)
    if options.probabilities:
        names.append(PROBABILITIES_NAME)
    return names


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


def _volumes_by_slab(
    seg: MetaTensor, image: MetaTensor, affine: np.ndarray, labels: Mapping[int, str]
) -> list[dict]:
    """:func:`structure_volumes` over slabs of ``_SLAB`` slices, pooled exactly (count, mean, variance, min, max), so the
    float64 working copies stay small for 512x512x300 CTs."""
    if seg.ndim != 4 or seg.shape[-1] <= _SLAB:
        return structure_volumes(seg, image, affine, labels)
    parts = [
        structure_volumes(seg[..., z : z + _SLAB], image[..., z : z + _SLAB], affine, labels)
        for z in range(0, seg.shape[-1], _SLAB)
    ]
    rows = []
    for slabs in zip(*parts, strict=True):
        n = sum(r["voxels"] for r in slabs)
        row = {**slabs[0], "voxels": n, "volume_ml": sum(r["volume_ml"] for r in slabs)}
        if n and any(r["mean_intensity"] is not None for r in slabs):
            filled = [r for r in slabs if r["voxels"]]
            mean = sum(r["voxels"] * r["mean_intensity"] for r in filled) / n
            second = sum(
                r["voxels"] * (r["std_intensity"] ** 2 + (r["mean_intensity"] - mean) ** 2) for r in filled
            )
            row["mean_intensity"], row["std_intensity"] = mean, float(np.sqrt(second / n))
            row["min_intensity"] = min(r["min_intensity"] for r in filled)
            row["max_intensity"] = max(r["max_intensity"] for r in filled)
        rows.append(row)
    return rows


def _write_dicom_outputs(
    seg: MetaTensor,
    meta: Mapping,
    case_dir: Path,
    labels: Mapping[int, str],
    options: OutputOptions,
    algorithm_name: str,
) -> list[str]:
    """``seg.dcm`` and/or ``rtstruct.dcm`` referencing the source DICOM (``meta["dicom_files"]`` in slice order,
    ``meta["frame_numbers"]`` for a multi-frame source); the names written."""
    files = list(meta.get("dicom_files", []))
    frames = meta.get("frame_numbers")
    frames = None if frames is None else [int(f) for f in frames]
    slices = seg.shape[-1] if seg.ndim == 4 else 0
    multi_frame = frames is not None and len(files) == 1 and len(frames) == slices
    if not labels or not slices or not (multi_frame or (frames is None and len(files) == slices)):
        logger.warning(
            "%s: no DICOM SEG/RTSTRUCT: they need a 3D series with one source file per slice or one multi-frame "
            "file (%d files for %d slices)",
            case_dir.name,
            len(files),
            slices,
        )
        return []
    names = []
    if options.dicom_seg:
        write_dicom_seg(
            seg, files, labels, case_dir / DICOM_SEG_NAME, algorithm_name=algorithm_name, frame_numbers=frames
        )
        names.append(DICOM_SEG_NAME)
    if options.rtstruct and multi_frame:
        logger.warning(
            "%s: no RTSTRUCT: its contours reference single-frame images, the source is multi-frame", case_dir.name
        )
    elif options.rtstruct:
        write_rtstruct(seg, files, labels, case_dir / RTSTRUCT_NAME, algorithm_name=algorithm_name)
        names.append(RTSTRUCT_NAME)
    return names


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
) -> tuple[list[str], list[dict]]:
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
        algorithm_name: recorded in the DICOM SEG.

    Returns:
        The written file names (relative to ``case_dir``) and the volume rows (``voxels``, ``volume_ml``,
        mean/std intensity per label).
    """
    seg = segmentation.labels
    affine = _on_input_grid(seg, image)
    channel = image[:1]
    write_mask_nifti(seg, affine, case_dir / SEG_NAME)
    rows = _volumes_by_slab(seg, channel, affine, labels)
    atomic_write_json(case_dir / VOLUMES_NAME, rows)
    names = [SEG_NAME, VOLUMES_NAME]
    if options.preview:
        render_preview(
            channel, seg, affine, labels, case_dir / PREVIEW_NAME, window=display_window, title=case_dir.name
        )
        names.append(PREVIEW_NAME)
    if options.probabilities:
        if segmentation.probabilities is None:
            raise ValueError("probabilities were asked for but the segmentation holds none")
        write_probabilities_nifti(segmentation.probabilities, affine, case_dir / PROBABILITIES_NAME)
        names.append(PROBABILITIES_NAME)
    if kind == "dicom" and (options.dicom_seg or options.rtstruct):
        names += _write_dicom_outputs(seg, image.meta, case_dir, labels, options, algorithm_name)
    return names, rows
