"""Describe the scans found at a path, and convert a scan to NIfTI (atomic write)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from nibabel.orientations import aff2axcodes

from transforms.dicom.series import find_series, series_to_volume
from transforms.dicom.discovery import SeriesInfo, SeriesRule, discover_series, walk_files
from transforms.io.errors import ScanLoadError
from transforms.io.nifti import is_nifti_path, load_nifti
from transforms.io.nifti_write import write_nifti

__all__ = ["OBLIQUE_TOLERANCE_DEG", "convert_to_nifti", "format_inspection", "has_problems", "inspect_path"]

logger = logging.getLogger(__name__)

OBLIQUE_TOLERANCE_DEG = 0.1
"""Voxel axes further than this from every world axis make the orientation ``oblique``."""

_COLUMNS = (
    "kind",
    "path",
    "series_uid",
    "modality",
    "slices",
    "size",
    "spacing",
    "orientation",
    "range",
    "problems",
)


def _orientation(affine: np.ndarray) -> str:
    """Axis codes of the closest orientation, e.g. ``"RAS"``, with ``" (oblique 18.0 deg)"`` when the voxel axes
    are tilted against the world axes by more than :data:`OBLIQUE_TOLERANCE_DEG`."""
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    codes = "".join(aff2axcodes(affine))
    tilt = float(np.degrees(np.arccos(np.clip(np.abs(columns).max(axis=0), 0.0, 1.0))).max())
    return f"{codes} (oblique {tilt:.1f} deg)" if tilt > OBLIQUE_TOLERANCE_DEG else codes


def _row(kind: str, array: np.ndarray | None, affine: np.ndarray | None, **fields) -> dict:
    row = {
        "kind": kind,
        "path": "",
        "series_uid": "",
        "modality": "",
        "slices": 0,
        "size": (),
        "spacing": (),
        "orientation": "",
        "range": (),
        "problems": [],
    }
    row.update(fields)
    if array is not None and affine is not None:
        row["size"] = tuple(int(s) for s in array.shape)
        row["slices"] = int(array.shape[2]) if array.ndim >= 3 else 1
        row["spacing"] = tuple(
            round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)[: array.ndim]
        )
        row["orientation"] = _orientation(affine)
        row["range"] = (float(np.min(array)), float(np.max(array)))
    return row


def _nifti_row(path: Path, shown: str) -> dict:
    try:
        array, affine, _ = load_nifti(path)
        return _row("nifti", array, affine, path=shown)
    except ScanLoadError as err:
        return _row("nifti", None, None, path=shown, problems=[str(err)])


def _series_volume(series: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """``(array (X, Y, Z), affine)``; a single slice becomes a one-slice volume (slice thickness as z spacing)."""
    single = series.n_slices == 1
    array, affine, _ = series_to_volume(series, spatial_dims=2 if single else 3)
    return (array[..., None] if single else array), affine


def _series_row(series: SeriesInfo, shown: str) -> dict:
    fields = {"path": shown, "series_uid": series.uid, "modality": series.modality}
    try:
        return _row("dicom", *_series_volume(series), **fields)
    except ScanLoadError as err:
        return _row("dicom", None, None, slices=series.n_slices, problems=[str(err)], **fields)


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else path.name


def inspect_path(path: str | Path) -> list[dict]:
    """Describe every image at ``path``: a NIfTI file, one DICOM file, or a folder searched (recursively) for
    NIfTI files and DICOM series.

    No free-text header field (SeriesDescription ...) is shown: series are named by UID and location.

    Returns:
        One dict per image/series with ``kind`` (``nifti``/``dicom``), ``path`` (relative to ``path``: the file,
        or the folder of a series), ``series_uid``, ``modality``, ``slices``, ``size``, ``spacing`` (mm),
        ``orientation`` (e.g. ``"LPS"``, ``"RAS (oblique 18.0 deg)"``), ``range`` (min, max intensity),
        ``problems`` (messages; empty when it loads cleanly).

    Raises:
        ScanLoadError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise ScanLoadError(f"{path}: no such file or folder.")
    if path.is_file() and is_nifti_path(path):
        return [_nifti_row(path, path.name)]
    if path.is_file():
        try:
            return [_series_row(find_series(path), path.name)]
        except ScanLoadError as err:
            return [_row("dicom", None, None, path=path.name, problems=[str(err)])]
    rows = [
        _nifti_row(f, _shown(f, path))
        for f in walk_files(path)
        if is_nifti_path(f) and not any(part.startswith(".") for part in f.relative_to(path).parts)
    ]
    try:
        found = discover_series(path)
    except ScanLoadError as err:
        return [*rows, _row("dicom", None, None, path=path.name, problems=[str(err)])]
    for series in found:
        folder = Path(os.path.commonpath([f.path for f in series.files]))
        rows.append(_series_row(series, _shown(folder if folder.is_dir() else folder.parent, path)))
    return rows


def has_problems(rows: list[dict]) -> bool:
    """True when ``rows`` is empty (nothing found) or any image has problems."""
    return not rows or any(r["problems"] for r in rows)


def _cell(value) -> str:
    if isinstance(value, tuple):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if value else "-"
    if isinstance(value, list):
        return "; ".join(value) if value else "ok"
    return str(value) if value != "" else "-"


def format_inspection(rows: list[dict]) -> str:
    """Rows from :func:`inspect_path` as a plain-text table (one line per image, problems last)."""
    if not rows:
        return "no images found (no NIfTI files and no DICOM image series)"
    table = [list(_COLUMNS)] + [
        [_cell(r[c]) if c != "range" else _cell(tuple(round(v, 1) for v in r[c])) for c in _COLUMNS]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in table
    )


def convert_to_nifti(
    path: str | Path,
    out_path: str | Path,
    series_uid: str | None = None,
    series_rule: SeriesRule | None = None,
) -> Path:
    """Load a scan and write it as NIfTI with its geometry; a single-slice DICOM series becomes a one-slice
    volume ``(X, Y, 1)`` whose z spacing is the slice thickness (as dicom2nifti and SimpleITK write it).

    Integer-valued intensities that fit int16 (CT in HU) are stored as int16, others as float32. The file is
    written atomically by :func:`transforms.io.nifti_write.write_nifti`.

    Args:
        path: NIfTI file, DICOM folder or DICOM file.
        out_path: ``.nii`` or ``.nii.gz`` destination.
        series_uid, series_rule: series choice for DICOM folders.

    Returns:
        ``out_path``.
    """
    out_path = Path(out_path)
    if not is_nifti_path(out_path):
        raise ValueError(f"out_path must end in .nii or .nii.gz, got {out_path}.")
    path = Path(path)
    if not path.exists():
        raise ScanLoadError(f"{path}: no such file or folder.")
    if path.is_file() and is_nifti_path(path):
        array, affine, _ = load_nifti(path)
    else:
        array, affine = _series_volume(find_series(path, series_uid=series_uid, rule=series_rule))
    info = np.iinfo(np.int16)
    if np.array_equal(array, np.round(array)) and array.min() >= info.min and array.max() <= info.max:
        array = array.astype(np.int16)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(array, affine, out_path)
    logger.info("converted %s to %s", path, out_path)
    return out_path
