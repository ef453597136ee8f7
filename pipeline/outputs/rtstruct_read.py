"""Reading DICOM RT Structure Sets (RTSTRUCT): contours in patient space, or a label map on the source slices.

The label map follows the shared voxel order ``mask[i, j, k] = frame_k[j, i]`` for the source files passed in
slice order ``k``, so a structure set written by :func:`pipeline.outputs.rtstruct.write_rtstruct` rasterises back to
its mask. Pixels are pixel centres inside a structure's contours by the rule of
:mod:`pipeline.outputs.contour_fill`: duplicated contours of one structure on one slice count once, contours nested
in another are holes (islands in holes are kept), merely overlapping contours are united. Contours that are not
``CLOSED_PLANAR`` (points, open lines) enclose nothing and are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage

from pipeline.outputs.contour_fill import fill_structure_slice
from pipeline.outputs.rtstruct import SourceSlice, read_source_slices

__all__ = ["RoiRaster", "rasterise_rois", "read_rtstruct", "rtstruct_to_mask"]


@dataclass
class RoiRaster:
    """One ROI rasterised onto the source slices.

    Attributes:
        mask: boolean ``(X, Y, Z)`` mask, ``mask[i, j, k] = frame_k[j, i]``.
        contours: closed planar contours read.
        duplicates: slice index ``k`` -> duplicate contours merged there (absent: none).
        unresolved: contours whose referenced image is not among the source files (placed by plane position).
    """

    mask: np.ndarray
    contours: int = 0
    duplicates: dict[int, int] = field(default_factory=dict)
    unresolved: int = 0


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


def _slice_of(
    item: Dataset, points: np.ndarray, slices: list[SourceSlice], by_uid: dict[str, int]
) -> tuple[int, bool]:
    """Index of the source slice a contour lies on (its referenced image, else the nearest plane) and whether
    it referenced an image that is not among the slices."""
    refs = [str(image.ReferencedSOPInstanceUID) for image in item.get("ContourImageSequence", [])]
    for uid in refs:
        if uid in by_uid:
            return by_uid[uid], False
    normal = slices[0].normal
    pos = np.array([normal @ s.ipp for s in slices])
    dist = np.abs(pos - float(np.mean(points @ normal)))
    k = int(np.argmin(dist))
    tol = 0.5 * float(np.min(np.diff(pos))) if len(pos) > 1 else 0.5
    if dist[k] > tol:
        raise ValueError(
            f"a contour lies {dist[k]:.3f} mm from the nearest source slice (tolerance {tol:.3f} mm)"
        )
    return k, bool(refs)


def rasterise_rois(
    path: str | os.PathLike,
    source_files: Sequence[str | os.PathLike],
    names: Iterable[str] | None = None,
    *,
    rule: str = "centre",
) -> dict[str, RoiRaster]:
    """Rasterise ROIs of an RT Structure Set onto its source slices, each on its own (no overlap rule).

    Contours are matched to slices by their referenced SOP Instance UID, else by the nearest slice plane
    (counted in :attr:`RoiRaster.unresolved` when a reference was given but not found), and filled by
    :func:`pipeline.outputs.contour_fill.fill_structure_slice`.

    Args:
        path: the RTSTRUCT file.
        source_files: the referenced single-frame images, in the wanted slice order.
        names: ROI names to rasterise (exact names; unknown ones are skipped); all ROIs when ``None``.
        rule: which pixels a contour covers, ``"centre"`` or ``"boundary"`` (:mod:`pipeline.outputs.contour_fill`).

    Returns:
        ROI name -> :class:`RoiRaster` (ROIs listed in ``StructureSetROISequence`` order; two ROIs of one name
        are united).

    Raises:
        ValueError: the file is not an RT Structure Set, or a contour without a known referenced image lies
            more than half a slice gap from every source slice.
    """
    slices = read_source_slices(source_files)
    rows, cols = slices[0].size
    by_uid = {s.uid: k for k, s in enumerate(slices)}
    ds = _read_structure_set(path)
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    wanted = set(numbers.values()) if names is None else set(names)
    out: dict[str, RoiRaster] = {}
    for roi in sorted(ds.get("ROIContourSequence", []), key=lambda r: int(r.ReferencedROINumber)):
        name = numbers.get(int(roi.ReferencedROINumber))
        if name not in wanted:
            continue
        raster = out.setdefault(name, RoiRaster(np.zeros((cols, rows, len(slices)), dtype=bool)))
        on_slice: dict[int, list[np.ndarray]] = {}
        for item in roi.get("ContourSequence", []):
            if str(item.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray(item.ContourData, dtype=np.float64).reshape(-1, 3)
            k, unresolved = _slice_of(item, points, slices, by_uid)
            raster.contours += 1
            raster.unresolved += unresolved
            on_slice.setdefault(k, []).append(slices[k].to_pixel(points))
        for k, polygons in on_slice.items():
            fill, merged = fill_structure_slice(polygons, (rows, cols), rule)
            raster.mask[:, :, k] |= fill.T
            if merged:
                raster.duplicates[k] = raster.duplicates.get(k, 0) + merged
    return out


def rtstruct_to_mask(
    path: str | os.PathLike,
    source_files: Sequence[str | os.PathLike],
    labels: Mapping[int, str] | None = None,
    *,
    rule: str = "centre",
) -> np.ndarray:
    """Rasterise an RT Structure Set onto its source slices as an ``(X, Y, Z)`` label map.

    Each ROI is filled by :func:`rasterise_rois` (duplicates once, nested contours are holes); where ROIs
    overlap, the higher ROI number wins.

    Args:
        path: the RTSTRUCT file.
        source_files: the referenced single-frame images, in the wanted slice order.
        labels: label id -> ROI name; when given, ROIs are mapped to ids by name (ROIs whose name is not listed
            are skipped); otherwise values are the ROI numbers.
        rule: the contour fill rule of :func:`rasterise_rois`.

    Returns:
        ``(X, Y, Z)`` label map, uint8 (uint16 when a value exceeds 255).

    Raises:
        ValueError: the file is not an RT Structure Set, or a contour without a known referenced image lies
            more than half a slice gap from every source slice.
    """
    ds = _read_structure_set(path)
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    by_name = {name: int(lid) for lid, name in (labels or {}).items()}
    values = {n: (by_name.get(name) if labels is not None else n) for n, name in numbers.items()}
    rasters = rasterise_rois(path, source_files, {numbers[n] for n, v in values.items() if v}, rule=rule)
    top = max([0, *(v for v in values.values() if v is not None)])
    shape = next(iter(rasters.values())).mask.shape if rasters else None
    if shape is None:
        slices = read_source_slices(source_files)
        shape = (slices[0].size[1], slices[0].size[0], len(slices))
    out = np.zeros(shape, dtype=np.uint16 if top > 255 else np.uint8)
    for n in sorted(numbers):
        if values[n] and numbers[n] in rasters:
            out[rasters[numbers[n]].mask] = values[n]
    return out
