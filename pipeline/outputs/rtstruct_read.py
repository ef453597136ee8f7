"""Reading DICOM RT Structure Sets (RTSTRUCT): contours in patient space, or a label map on the source slices.

The label map follows the shared voxel order ``mask[i, j, k] = frame_k[j, i]`` for the source files passed in
slice order ``k``, so a structure set written by :func:`pipeline.outputs.rtstruct.write_rtstruct` rasterises back to
its mask. Pixels are filled by the even-odd rule on pixel centres, so holes stay holes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage

from pipeline.outputs.rtstruct import SourceSlice, read_source_slices

__all__ = ["read_rtstruct", "rtstruct_to_mask"]


def _read_structure_set(path: str | os.PathLike) -> Dataset:
    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != RTStructureSetStorage:
        raise ValueError(f"{str(path)!r} is not an RT Structure Set (SOP Class {ds.get('SOPClassUID')!r})")
    return ds


def read_rtstruct(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read the contours of an RT Structure Set.

    Args:
        path: the RTSTRUCT file.

    Returns:
        ROI name -> list of closed planar contours, each ``(N, 3)`` in patient LPS mm (an ROI without
        contours maps to an empty list).

    Raises:
        ValueError: the file is not an RT Structure Set.
    """
    ds = _read_structure_set(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    out: dict[str, list[np.ndarray]] = {name: [] for name in names.values()}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI {int(roi.ReferencedROINumber)}")
        for item in roi.get("ContourSequence", []):
            points = np.asarray(item.ContourData, dtype=np.float64).reshape(-1, 3)
            out.setdefault(name, []).append(points)
    return out


def _fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(rows, columns)`` mask of the pixel centres inside an odd number of closed ``(N, 2)`` (row, column)
    polygons, by scanlines: the same pixels as XOR-ing ``skimage.draw.polygon`` fills, without its cost per
    vertex and pixel."""
    start = np.concatenate(polygons)
    end = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    out = np.zeros(shape, dtype=bool)
    lo, hi = max(0, int(np.ceil(start[:, 0].min()))), min(shape[0] - 1, int(np.floor(start[:, 0].max())))
    if hi < lo:
        return out
    y = np.arange(lo, hi + 1, dtype=np.float64)[:, None]
    (r0, c0), (r1, c1) = start.T, end.T
    spans = (r0 <= y) != (r1 <= y)  # half-open in y, so a vertex on a scanline counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(spans, c0 + (y - r0) * (c1 - c0) / (r1 - r0), np.inf)
    x = np.sort(x, axis=1)[:, : x.shape[1] // 2 * 2]  # an even count of finite crossings per row
    pairs = np.isfinite(x[:, 1::2])  # crossings come in pairs: inside from x[0] to x[1], x[2] to x[3] ...
    rows = np.broadcast_to(np.arange(hi - lo + 1)[:, None], pairs.shape)[pairs]
    diff = np.zeros((hi - lo + 1, shape[1] + 1), dtype=np.int32)
    np.add.at(diff, (rows, np.clip(np.ceil(x[:, 0::2][pairs]), 0, shape[1]).astype(int)), 1)
    np.add.at(diff, (rows, np.clip(np.ceil(x[:, 1::2][pairs]), 0, shape[1]).astype(int)), -1)
    out[lo : hi + 1] = np.cumsum(diff[:, :-1], axis=1) > 0
    return out


def _slice_of(item: Dataset, points: np.ndarray, slices: list[SourceSlice], by_uid: dict[str, int]) -> int:
    """Index of the source slice a contour lies on: its referenced image, else the nearest plane."""
    for image in item.get("ContourImageSequence", []):
        k = by_uid.get(str(image.ReferencedSOPInstanceUID))
        if k is not None:
            return k
    normal = slices[0].normal
    pos = np.array([normal @ s.ipp for s in slices])
    dist = np.abs(pos - float(np.mean(points @ normal)))
    k = int(np.argmin(dist))
    tol = 0.5 * float(np.min(np.diff(pos))) if len(pos) > 1 else 0.5
    if dist[k] > tol:
        raise ValueError(
            f"a contour lies {dist[k]:.3f} mm from the nearest source slice (tolerance {tol:.3f} mm)"
        )
    return k


def rtstruct_to_mask(
    path: str | os.PathLike,
    source_files: Sequence[str | os.PathLike],
    labels: Mapping[int, str] | None = None,
) -> np.ndarray:
    """Rasterise an RT Structure Set onto its source slices as an ``(X, Y, Z)`` label map.

    A pixel belongs to an ROI when its centre lies inside an odd number of the ROI's contours on that slice
    (even-odd rule, so holes come back as holes). Contours are matched to slices by their referenced SOP
    Instance UID, else by the nearest slice plane. Where ROIs overlap, the higher ROI number wins.

    Args:
        path: the RTSTRUCT file.
        source_files: the referenced single-frame images, in the wanted slice order.
        labels: label id -> ROI name; when given, ROIs are mapped to ids by name (ROIs whose name is not listed
            are skipped); otherwise values are the ROI numbers.

    Returns:
        ``(X, Y, Z)`` label map, uint8 (uint16 when a value exceeds 255).

    Raises:
        ValueError: the file is not an RT Structure Set, or a contour without a known referenced image lies
            more than half a slice gap from every source slice.
    """
    slices = read_source_slices(source_files)
    rows, cols = slices[0].size
    by_uid = {s.uid: k for k, s in enumerate(slices)}
    ds = _read_structure_set(path)
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    by_name = {name: int(lid) for lid, name in (labels or {}).items()}
    values = {n: (by_name.get(name) if labels is not None else n) for n, name in numbers.items()}
    top = max([0, *(v for v in values.values() if v is not None)])
    out = np.zeros((cols, rows, len(slices)), dtype=np.uint16 if top > 255 else np.uint8)
    for roi in sorted(ds.get("ROIContourSequence", []), key=lambda r: int(r.ReferencedROINumber)):
        value = values.get(int(roi.ReferencedROINumber))
        if not value:
            continue
        on_slice: dict[int, list[np.ndarray]] = {}
        for item in roi.get("ContourSequence", []):
            points = np.asarray(item.ContourData, dtype=np.float64).reshape(-1, 3)
            k = _slice_of(item, points, slices, by_uid)
            on_slice.setdefault(k, []).append(slices[k].to_pixel(points))
        for k, polygons in on_slice.items():
            out[:, :, k][_fill_even_odd(polygons, (rows, cols)).T] = value
    return out
