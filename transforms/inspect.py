"""Describe the scans found at a path, and convert a scan to NIfTI (atomic write)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes

from transforms.dicom import series_to_volume
from transforms.dicom_discovery import SeriesRule, discover_series
from transforms.io import load_scan
from transforms.io_errors import ScanLoadError
from transforms.nifti import is_nifti_path, load_nifti

__all__ = ["convert_to_nifti", "format_inspection", "inspect_path"]

logger = logging.getLogger(__name__)

_COLUMNS = (
    "kind",
    "series_uid",
    "modality",
    "description",
    "slices",
    "size",
    "spacing",
    "orientation",
    "range",
    "problems",
)


def _row(kind: str, array: np.ndarray | None, affine: np.ndarray | None, **fields) -> dict:
    row = {
        "kind": kind,
        "series_uid": "",
        "modality": "",
        "description": "",
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
        row["orientation"] = "".join(aff2axcodes(affine))
        row["range"] = (float(np.min(array)), float(np.max(array)))
    return row


def inspect_path(path: str | Path) -> list[dict]:
    """Describe every image at ``path``: a NIfTI file, one DICOM file, or a folder searched for DICOM series.

    Returns:
        One dict per image/series with ``kind`` (``nifti``/``dicom``), ``series_uid``, ``modality``,
        ``description``, ``slices``, ``size``, ``spacing`` (mm), ``orientation`` (e.g. ``"LPS"``),
        ``range`` (min, max intensity), ``problems`` (messages; empty when it loads cleanly).

    Raises:
        ScanLoadError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise ScanLoadError(f"{path}: no such file or folder.")
    if path.is_file() and is_nifti_path(path):
        try:
            array, affine, _ = load_nifti(path)
            return [_row("nifti", array, affine, description=path.name)]
        except ScanLoadError as err:
            return [_row("nifti", None, None, description=path.name, problems=[str(err)])]
    if path.is_file():
        try:
            volume = load_scan(path, spatial_dims=3)
            meta = volume.meta
            return [
                _row(
                    "dicom",
                    volume.numpy()[0],
                    meta["original_affine"],
                    series_uid=meta["SeriesInstanceUID"],
                    modality=meta["modality"],
                    description=meta["SeriesDescription"],
                )
            ]
        except ScanLoadError as err:
            return [_row("dicom", None, None, description=path.name, problems=[str(err)])]
    rows = []
    for series in discover_series(path):
        fields = {"series_uid": series.uid, "modality": series.modality, "description": series.description}
        try:
            array, affine, _ = series_to_volume(series, spatial_dims=3 if series.n_slices > 1 else 2)
            rows.append(_row("dicom", array, affine, **fields))
        except ScanLoadError as err:
            rows.append(_row("dicom", None, None, slices=series.n_slices, problems=[str(err)], **fields))
    return rows


def _cell(value) -> str:
    if isinstance(value, tuple):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if value else "-"
    if isinstance(value, list):
        return "; ".join(value) if value else "ok"
    return str(value) if value != "" else "-"


def format_inspection(rows: list[dict]) -> str:
    """Rows from :func:`inspect_path` as a plain-text table (one line per image, problems last)."""
    if not rows:
        return "no images found"
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
    """Load a scan with :func:`transforms.io.load_scan` and write it as NIfTI with its geometry.

    Integer-valued intensities that fit int16 (CT in HU) are stored as int16, others as float32. The file is
    written to a temporary name in the same folder and moved into place with ``os.replace``.

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
    volume = load_scan(path, series_uid=series_uid, series_rule=series_rule)
    array = volume.numpy()[0]
    affine = np.asarray(volume.meta["original_affine"], dtype=np.float64)
    info = np.iinfo(np.int16)
    if np.array_equal(array, np.round(array)) and array.min() >= info.min and array.max() <= info.max:
        array = array.astype(np.int16)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if out_path.name.lower().endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=suffix, dir=out_path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("converted %s to %s", path, out_path)
    return out_path
