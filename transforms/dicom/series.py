"""DICOM series -> volume: slice sorting, geometry checks, RAS affine and non-identifying metadata.

Written by hand rather than with MONAI's ``PydicomReader``, which merges series and averages spacing over missing
slices. Geometry follows the project convention: ``vol[i, j, k] = slice_k.pixel_array[j, i]``, slices sorted by
position along ``n = cross(row_dir, col_dir)`` ascending, ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps``.

Gantry tilt (slice positions drifting in-plane along the stack) is refused rather than resampled: the sheared
grid cannot be represented by an orthogonal affine, and silent resampling would change voxel values. Resample
such series with a tool that corrects tilt (e.g. ``dcm2niix``) first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from transforms.dicom.discovery import (
    PIXEL_DATA_TAG,
    DicomFile,
    SeriesInfo,
    SeriesRule,
    check_image_types,
    discover_series,
    read_header,
    select_series,
)
from transforms.dicom.pixels import check_decoder, read_planes
from transforms.io.errors import ScanLoadError

__all__ = ["GAP_FACTOR", "TILT_TOLERANCE_DEG", "find_series", "load_dicom", "series_to_volume"]

logger = logging.getLogger(__name__)

TILT_TOLERANCE_DEG = 0.1
GAP_FACTOR = 1.5
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MAX_NAMED = 6


@dataclass
class _Plane:
    """Geometry and rescale of one image plane (a file, or a frame of a multi-frame file)."""

    name: str
    file: int
    frame: int
    iop: np.ndarray
    ipp: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int]
    slope: float
    intercept: float


def _first(ds: Dataset | None, seq: str, key: str):
    """``ds.<seq>[0].<key>`` or ``None``."""
    if ds is None or seq not in ds or not ds[seq].value:
        return None
    return ds[seq].value[0].get(key)


def _plain(values) -> str:
    """Numbers as plain text ``[0.7, 0.8]`` (no numpy reprs such as ``np.float64(0.7)``)."""
    return "[" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + "]"


def _floats(value, n: int, what: str, name: str) -> np.ndarray:
    if value is None:
        raise ScanLoadError(f"{name}: missing {what}; cannot place the image in space.")
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ScanLoadError(f"{name}: {what} is not a list of numbers ({err}).") from err
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ScanLoadError(f"{name}: {what} must hold {n} finite numbers, got {_plain(arr)}.")
    return arr


def _classic_planes(files: list[DicomFile]) -> list[_Plane]:
    planes = []
    for f, item in enumerate(files):
        hdr, name = item.header, str(item.path)
        planes.append(
            _Plane(
                name,
                f,
                0,
                _floats(hdr.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", name),
                _floats(hdr.get("ImagePositionPatient"), 3, "ImagePositionPatient", name),
                _floats(hdr.get("PixelSpacing"), 2, "PixelSpacing", name),
                (int(hdr.get("Rows", 0)), int(hdr.get("Columns", 0))),
                float(hdr.get("RescaleSlope", 1.0) or 1.0),
                float(hdr.get("RescaleIntercept", 0.0) or 0.0),
            )
        )
    return planes


def _multiframe_planes(item: DicomFile) -> list[_Plane]:
    """Planes of an enhanced multi-frame image from its shared and per-frame functional groups."""
    hdr, path = item.header, str(item.path)
    n_frames = int(hdr.get("NumberOfFrames", 1) or 1)
    per_frame = hdr.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise ScanLoadError(
            f"{path}: multi-frame image with {n_frames} frames lacks a PerFrameFunctionalGroupsSequence of the "
            "same length; only enhanced multi-frame CT/MR (per-frame functional groups) is supported."
        )
    shared = hdr.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    size = (int(hdr.get("Rows", 0)), int(hdr.get("Columns", 0)))

    def pick(group: Dataset, seq: str, key: str):
        value = _first(group, seq, key)
        return value if value is not None else _first(shared, seq, key)

    planes = []
    for k, group in enumerate(per_frame):
        name = f"{path}#frame{k + 1}"
        slope = pick(group, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = pick(group, "PixelValueTransformationSequence", "RescaleIntercept")
        planes.append(
            _Plane(
                name,
                0,
                k,
                _floats(
                    pick(group, "PlaneOrientationSequence", "ImageOrientationPatient"),
                    6,
                    "ImageOrientationPatient",
                    name,
                ),
                _floats(
                    pick(group, "PlanePositionSequence", "ImagePositionPatient"),
                    3,
                    "ImagePositionPatient",
                    name,
                ),
                _floats(pick(group, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", name),
                size,
                float(slope) if slope is not None else float(hdr.get("RescaleSlope", 1.0)),
                float(intercept) if intercept is not None else float(hdr.get("RescaleIntercept", 0.0)),
            )
        )
    return planes


def _named(names: list[str]) -> str:
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(names[:_MAX_NAMED]) + more


def _check_consistent(planes: list[_Plane], label: str) -> None:
    """Positive pixel spacing, and the same image size, orientation and pixel spacing on every plane; finite
    rescale values."""
    ref = planes[0]
    bad = [f"{p.name} has {_plain(p.spacing)}" for p in planes if np.any(p.spacing <= 0)]
    if bad:
        raise ScanLoadError(f"series {label}: degenerate PixelSpacing (must be positive): {_named(bad)}.")
    checks = [
        ("image sizes (rows, columns)", lambda p: p.size != ref.size, lambda p: p.size),
        (
            "orientation (ImageOrientationPatient)",
            lambda p: np.max(np.abs(p.iop - ref.iop)) > 1e-4,
            lambda p: _plain(np.round(p.iop, 5)),
        ),
        (
            "pixel spacing (PixelSpacing)",
            lambda p: np.max(np.abs(p.spacing / ref.spacing - 1)) > 1e-4,
            lambda p: _plain(p.spacing),
        ),
    ]
    for what, differs, show in checks:
        bad = [p for p in planes if differs(p)]
        if bad:
            raise ScanLoadError(
                f"series {label}: inconsistent {what}: {ref.name} has {show(ref)} but "
                f"{_named([f'{p.name} has {show(p)}' for p in bad])}."
            )
    if min(ref.size) < 1:
        raise ScanLoadError(f"series {label}: {ref.name} has no Rows/Columns.")
    bad = [p.name for p in planes if not (np.isfinite(p.slope) and np.isfinite(p.intercept))]
    if bad:
        raise ScanLoadError(
            f"series {label}: NaN or infinite RescaleSlope/RescaleIntercept in {_named(bad)}."
        )


def _sort_and_check(planes: list[_Plane], normal: np.ndarray, label: str) -> list[_Plane]:
    """Planes sorted along ``normal``; raise on duplicate positions, gantry tilt or missing slices."""
    planes = sorted(planes, key=lambda p: float(p.ipp @ normal))
    pos = np.array([p.ipp @ normal for p in planes])
    if len(planes) < 2:
        return planes
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        pairs = [f"{planes[i].name} = {planes[i + 1].name} at {pos[i]:.3f} mm" for i in dup]
        raise ScanLoadError(f"series {label}: duplicate slice positions: {_named(pairs)}.")
    offsets = np.array([p.ipp - planes[0].ipp for p in planes])
    drift = np.linalg.norm(offsets - np.outer(pos - pos[0], normal), axis=1)
    tilt = float(np.degrees(np.max(np.arctan2(drift[1:], pos[1:] - pos[0]))))
    if tilt > TILT_TOLERANCE_DEG:
        raise ScanLoadError(
            f"series {label}: gantry tilt of {tilt:.2f} degrees (slice positions move in-plane along the stack, "
            f"e.g. {planes[-1].name}); tilted series are refused, not resampled: correct the tilt first "
            "(e.g. dcm2niix) and load the result."
        )
    median = float(np.median(gaps))
    missing = np.flatnonzero(gaps > GAP_FACTOR * median)
    if missing.size:
        where = [f"{gaps[i]:.3f} mm between {planes[i].name} and {planes[i + 1].name}" for i in missing]
        raise ScanLoadError(
            f"series {label}: missing slices: gap > {GAP_FACTOR}x the median spacing {median:.3f} mm: {_named(where)}."
        )
    if np.max(np.abs(gaps - median)) > 0.01 * median:
        logger.warning(
            "series %s: irregular slice spacing %.4f..%.4f mm; using the mean", label, gaps.min(), gaps.max()
        )
    return planes


def _affine_ras(planes: list[_Plane], normal: np.ndarray, thickness: float) -> np.ndarray:
    ref = planes[0]
    lps = np.eye(4)
    lps[:3, 0] = ref.iop[:3] * ref.spacing[1]
    lps[:3, 1] = ref.iop[3:] * ref.spacing[0]
    lps[:3, 2] = (planes[-1].ipp - ref.ipp) / (len(planes) - 1) if len(planes) > 1 else normal * thickness
    lps[:3, 3] = ref.ipp
    return _LPS_TO_RAS @ lps


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def series_to_volume(
    series: SeriesInfo,
    *,
    spatial_dims: int = 3,
    dtype: np.dtype | type = np.float32,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load one series (or one enhanced multi-frame file) as a volume in the project convention.

    Args:
        series: files of one SeriesInstanceUID (:func:`transforms.dicom.discovery.discover_series`).
        spatial_dims: 3 for ``(X, Y, Z)``; 2 for a single slice ``(X, Y)``.
        dtype: output dtype (float32 HU by default).
        workers: reading/decoding threads.

    Returns:
        ``(array, affine_ras (4, 4), meta)``; ``meta`` holds geometry and non-identifying header fields only.

    Raises:
        ScanLoadError: the series has unreadable files (:attr:`SeriesInfo.broken`, truncated pixel data), is
            inconsistent, has gaps, duplicates, gantry tilt, non-finite voxels, a degenerate orientation, an
            undecodable transfer syntax, or its slice count does not fit ``spatial_dims``.
    """
    label = series.uid or "(no SeriesInstanceUID)"  # never SeriesDescription: free text that may identify
    files = series.files
    if series.broken:
        raise ScanLoadError(
            f"series {label}: {len(series.broken)} file(s) of the series cannot be read: {_named(series.broken)}; "
            "repair or remove them (a volume without them would silently miss slices)."
        )
    multi = [f for f in files if int(f.header.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(files) > 1:
        raise ScanLoadError(
            f"series {label}: mixes {len(multi)} multi-frame file(s) with other files: {_named([str(f.path) for f in multi])}."
        )
    planes = _multiframe_planes(files[0]) if multi else _classic_planes(files)
    _check_consistent(planes, label)
    for item in {str(f.header.file_meta.get("TransferSyntaxUID")): f for f in files}.values():
        check_decoder(item.header.file_meta.get("TransferSyntaxUID"), f"series {label} ({item.path})")
    ref = planes[0]
    normal = np.cross(ref.iop[:3], ref.iop[3:])
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise ScanLoadError(
            f"series {label}: ImageOrientationPatient {_plain(ref.iop)} of {ref.name} is not two orthonormal "
            "vectors (degenerate orientation)."
        )
    if spatial_dims == 3 and len(planes) == 1:
        raise ScanLoadError(
            f"series {label}: a single slice ({ref.name}) cannot form a 3D volume: segment it with a 2D bundle "
            "(e.g. bundles/ct_lesion_denseunet2d), or write it as a one-slice volume with `clinseg convert` "
            "(slice thickness as the z spacing) and use that file."
        )
    if spatial_dims == 2 and len(planes) != 1:
        raise ScanLoadError(
            f"series {label}: spatial_dims=2 needs a single slice, the series has {len(planes)}."
        )
    if not multi:
        check_image_types([files[p.file] for p in planes], [float(p.ipp @ normal) for p in planes], label)
    planes = _sort_and_check(planes, normal, label)
    hdr = files[0].header
    thickness = float(hdr.get("SpacingBetweenSlices", 0) or hdr.get("SliceThickness", 0) or 1.0)
    affine = _affine_ras(planes, normal, thickness)

    rows, cols = ref.size
    buf = np.empty((len(planes), rows, cols), dtype=dtype)
    read_planes(
        files,
        buf,
        np.array([p.slope for p in planes]),
        np.array([p.intercept for p in planes]),
        [(p.file, p.frame) for p in planes],
        workers=workers,
    )
    if any(f.pixel_tag != PIXEL_DATA_TAG for f in files):
        bad = [planes[z].name for z in np.flatnonzero(~np.isfinite(buf).all(axis=(1, 2)))]
        if bad:
            raise ScanLoadError(f"series {label}: non-finite voxels (NaN or infinite) in {_named(bad)}.")
    vol = buf.transpose(2, 1, 0)
    if spatial_dims == 2:
        vol = vol[:, :, 0]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    meta = {
        "modality": series.modality,
        "spacing": tuple(float(s) for s in spacing[:spatial_dims]),
        "SeriesInstanceUID": series.uid,
        "SeriesDescription": series.description,
        "StudyDate": _text(hdr.get("StudyDate")),
        "Manufacturer": _text(hdr.get("Manufacturer")),
        "ConvolutionKernel": _text(hdr.get("ConvolutionKernel")),
        "dicom_files": [str(files[p.file].path) for p in planes] if not multi else [str(files[0].path)],
        "sop_instance_uids": [str(files[p.file].header.get("SOPInstanceUID", "")) for p in planes]
        if not multi
        else [str(hdr.get("SOPInstanceUID", ""))],
    }
    if multi:
        meta["frame_numbers"] = [p.frame + 1 for p in planes]
    return vol, affine, meta


def load_dicom(
    path: Path,
    *,
    series_uid: str | None = None,
    rule: SeriesRule | None = None,
    spatial_dims: int = 3,
    dtype: np.dtype | type = np.float32,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load a DICOM folder (searched recursively) or a single (multi-frame) DICOM file.

    Args:
        path: folder of DICOM files at any depth, or one DICOM file.
        series_uid: SeriesInstanceUID to load; else ``rule`` chooses.
        rule: series choice rule (:class:`transforms.dicom.discovery.SeriesRule`).
        spatial_dims: 3 -> ``(X, Y, Z)``; 2 -> ``(X, Y)`` from a single slice.
        dtype: output dtype.
        workers: reading/decoding threads.

    Returns:
        ``(array, affine_ras, meta)`` as :func:`series_to_volume`.

    Raises:
        ScanLoadError: nothing loadable at ``path`` or the chosen series is broken (the message says which).
    """
    chosen = find_series(path, series_uid=series_uid, rule=rule)
    return series_to_volume(chosen, spatial_dims=spatial_dims, dtype=dtype, workers=workers)


def find_series(path: Path, *, series_uid: str | None = None, rule: SeriesRule | None = None) -> SeriesInfo:
    """The series to load at ``path``: one (multi-frame) DICOM file, or the series a folder's rule chooses.

    Raises:
        ScanLoadError: nothing loadable at ``path``, or no / an ambiguous series choice.
    """
    path = Path(path)
    if path.is_file():
        item = read_header(path)
        if item is None or item.pixel_offset < 0:
            raise ScanLoadError(f"{path}: not a readable DICOM image file.")
        hdr = item.header
        series = [
            SeriesInfo(
                str(hdr.get("SeriesInstanceUID", "")),
                str(hdr.get("Modality", "")),
                str(hdr.get("SeriesDescription", "")),
                [item],
            )
        ]
    else:
        series = discover_series(path)
    return select_series(series, path, series_uid=series_uid, rule=rule)
