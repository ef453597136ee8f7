"""DICOM RT Structure Set (RTSTRUCT) output for label maps predicted on a DICOM series, written with pydicom.

Voxel order follows the shared convention: ``mask[i, j, k] = frame_k[j, i]`` where ``k`` indexes the source
slices sorted ascending along the normal ``cross(row_dir, col_dir)``; the caller passes the source files in
that order (``meta["dicom_files"]``). Each declared label becomes one ROI whose ROINumber is the label id, so
ROI numbers are stable across cases; a label absent from the mask keeps its ROI with no contours.

Contours are traced per slice with ``skimage.measure.find_contours`` at level 0.5 on the zero-padded binary
slice, so every contour is closed and runs through the midpoints between inside and outside pixel centres;
points on straight runs are dropped (lossless). Each connected component is one contour with its holes joined
to it by zero-width cuts ("keyholes", as treatment-planning systems write them), so readers that fill every
contour on its own and readers that apply the even-odd rule across contours both get the holes back; an
island inside a hole is a contour of its own. A component too long for one ContourData element (64 kB) is cut
into bands of rows, which keeps both readings exact. Pixel ``(row, column)`` positions are placed in patient
space (LPS, mm) from each slice's own ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so
oblique series are exact. Rasterising the contours back (pixel centres inside) with
:func:`pipeline.outputs.rtstruct_read.rtstruct_to_mask` gives the mask again.

Before tracing, the mask is cleaned up and each ROI held to a contour budget (tiny components removed, tiny holes
filled, at most ``max_contours`` contours: :mod:`pipeline.outputs.contour_budget`), so a noisy prediction does not
become hundreds of thousands of contours; ``min_component_mm3=0, max_contours=None`` writes the mask as it is.

The structure set copies patient and study attributes from the source images, as the DICOM standard requires;
nothing of them is logged.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    generate_uid,
)
from scipy import ndimage
from skimage.measure import find_contours

from transforms.io.atomic import atomic_write
from pipeline.outputs.contour_budget import MAX_CONTOURS, MIN_COMPONENT_MM3, clean_labels, limit_contours
from pipeline.outputs.dicom_common import (
    check_ascending,
    check_labels,
    check_slice_grid,
    package_version,
    read_source_headers,
)
from pipeline.outputs.preview import label_colour
from pipeline.core.arrays import label_array

__all__ = ["write_rtstruct"]

logger = logging.getLogger(__name__)

# RT Referenced Study: the (retired) Detached Study Management SOP Class, as RT systems expect
_STUDY_REF_CLASS = "1.2.840.10008.3.1.2.3.1"
_PATIENT_STUDY_TAGS = (  # copied from the source images, as the standard requires; never logged
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_GEOMETRY_TAGS = ("SOPClassUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient")
_DECIMALS = 4  # 0.1 um: every coordinate below 1e10 mm fits a 16-character DS
_MAX_DS_BYTES = 0xFFFE  # explicit VR little endian: 16-bit value length


class SourceSlice:
    """Geometry and identity of one source image: ``point = ipp + col * dc * row_dir + row * dr * col_dir``."""

    def __init__(self, ds: Dataset, name: str):
        missing = [k for k in (*_GEOMETRY_TAGS, "PixelSpacing") if k not in ds or ds[k].value in (None, "")]
        if missing:
            raise ValueError(
                f"source file {name} lacks {missing}; contours need the slice's identity and geometry"
            )
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(
                f"source file {name} is a multi-frame image ({ds.NumberOfFrames} frames); RTSTRUCT output needs "
                "single-frame slices (one file per slice)"
            )
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        self.ds = ds
        self.row_dir, self.col_dir = iop[:3], iop[3:]
        self.normal = np.cross(self.row_dir, self.col_dir)
        self.ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        self.dr, self.dc = (float(v) for v in ds.PixelSpacing)
        self.size = (int(ds.Rows), int(ds.Columns))
        self.uid, self.sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)

    def to_patient(self, rc: np.ndarray) -> np.ndarray:
        """``(N, 2)`` pixel ``(row, column)`` -> ``(N, 3)`` LPS mm."""
        return (
            self.ipp + np.outer(rc[:, 1] * self.dc, self.row_dir) + np.outer(rc[:, 0] * self.dr, self.col_dir)
        )

    def to_pixel(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 3)`` LPS mm -> ``(N, 2)`` pixel ``(row, column)`` (projected onto the slice plane)."""
        d = xyz - self.ipp
        return np.stack([d @ self.col_dir / self.dr, d @ self.row_dir / self.dc], axis=1)


def read_source_slices(source_files: Sequence[str | os.PathLike]) -> list[SourceSlice]:
    """Headers of the series' single-frame ``source_files`` as :class:`SourceSlice`, in the given order.

    Raises:
        ValueError: no files, or a file is multi-frame or lacks its identity or geometry.
    """
    files = list(source_files)
    slices = [SourceSlice(ds, str(f)) for f, ds in zip(files, read_source_headers(files))]
    if not slices:
        raise ValueError("source_files must list the series' slice files, got none")
    return slices


def _check_sources(slices: list[SourceSlice], shape: tuple[int, int, int]) -> None:
    check_slice_grid([s.ds for s in slices], shape)
    for key in ("FrameOfReferenceUID", "StudyInstanceUID"):
        values = {str(s.ds.get(key, "")) for s in slices}
        if len(values) != 1 or "" in values:
            raise ValueError(
                f"source_files must share one non-empty {key}, found {len(values - {''})} distinct"
            )
    check_ascending(np.array([slices[0].normal @ s.ipp for s in slices]), "source_files")


def _drop_straight(rc: np.ndarray) -> np.ndarray:
    """Remove points of a closed ``(N, 2)`` contour lying on a straight run between their neighbours."""
    prev, nxt = np.roll(rc, 1, axis=0), np.roll(rc, -1, axis=0)
    a, b = rc - prev, nxt - rc
    straight = (np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) < 1e-9) & (np.sum(a * b, axis=1) > 0)
    return rc[~straight]


def _ds_values(xyz: np.ndarray) -> list[str]:
    """Flattened ContourData strings with :data:`_DECIMALS` decimals, trailing zeros stripped."""
    out = []
    for v in np.round(xyz.ravel(), _DECIMALS):
        text = f"{v:.{_DECIMALS}f}".rstrip("0").rstrip(".")
        out.append("0" if text in ("-0", "") else text)
    return out


def _image_ref(sl: SourceSlice) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sl.sop_class
    ref.ReferencedSOPInstanceUID = sl.uid
    return ref


def _contour_item(values: list[str], sl: SourceSlice, number: int) -> Dataset:
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_image_ref(sl)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(values) // 3
    item.ContourNumber = number
    item.ContourData = values
    return item


def _keyhole_polygons(binary: np.ndarray, components: np.ndarray) -> dict[int, np.ndarray]:
    """Component label -> closed ``(N, 2)`` pixel ``(row, column)`` polygon of that 4-connected component of
    ``binary`` ``(rows, columns)`` (labelled in ``components``), its holes joined to it by zero-width cuts
    ("keyholes").

    Contours are traced at level 0.5 on the zero-padded slice (foreground 4-connected, background
    8-connected), so vertices sit halfway between pixel centres. A hole's rightmost vertex
    ``M = (r, c + 0.5)`` is joined along pixel row ``r`` to the first boundary vertex to its right, on the
    enclosing outer contour or on a hole already joined (holes are joined rightmost first); the pixel centres
    along the cut are all foreground, and a cut along a pixel row adds no scanline crossings. So each polygon
    rasterises to its component both when every contour is filled on its own (union) and by the even-odd
    rule over all contours; islands inside holes are components of their own.
    """
    outers: dict[int, np.ndarray] = {}
    holes = []  # (rightmost column, row, enclosing component, contour starting at its rightmost vertex)
    for contour in find_contours(np.pad(binary, 1).astype(np.float32), 0.5):
        contour = contour[:-1] - 1.0  # closed: last point repeats the first
        i = int(np.argmax(contour[:, 1]))  # always (row, column + 0.5): foreground on one side
        row, col = int(contour[i, 0]), int(contour[i, 1] - 0.5)
        if binary[row, col]:
            outers[int(components[row, col])] = contour
        else:
            holes.append((contour[i, 1], row, int(components[row, col + 1]), np.roll(contour, -i, axis=0)))
    for column, row, component, hole in sorted(holes, key=lambda h: -h[0]):
        run = binary[row, int(column + 0.5) :]
        stop = int(column + 0.5) + (int(np.argmin(run)) if not run.all() else run.size)  # first background
        polygon = outers[component]
        at = int(np.flatnonzero((polygon[:, 0] == row) & (polygon[:, 1] == stop - 0.5))[0])
        outers[component] = np.concatenate([polygon[: at + 1], hole, hole[:1], polygon[at:]])
    return {c: _drop_straight(outers[c]) for c in sorted(outers)}


def _contour_values(binary: np.ndarray, sl: SourceSlice, origin: tuple[int, int] = (0, 0)) -> list[list[str]]:
    """ContourData of every component of ``binary`` ``(rows, columns)`` whose pixel ``(0, 0)`` is pixel
    ``origin`` of slice ``sl``: one keyhole polygon per component. A component whose ContourData would not fit
    one DS element is cut into two bands of rows traced apart: the cut runs between pixel rows, so both fill
    rules still give the component, and a one-row band (a run of 4 points) always fits."""
    components, _ = ndimage.label(binary)  # 4-connected, as find_contours' foreground
    boxes = ndimage.find_objects(components)
    out = []
    for label, polygon in _keyhole_polygons(binary, components).items():
        values = _ds_values(sl.to_patient(polygon + origin))
        if len("\\".join(values)) <= _MAX_DS_BYTES:
            out.append(values)
            continue
        rows, cols = boxes[label - 1]
        part = components[rows, cols] == label
        half = part.shape[0] // 2
        logger.debug("a contour of %d points is cut into two bands of rows to fit a DS element", len(polygon))
        for start, stop in ((0, half), (half, part.shape[0])):
            corner = (origin[0] + rows.start + start, origin[1] + cols.start)
            out += _contour_values(part[start:stop], sl, corner)
    return out


def _contours(binary: np.ndarray, slices: list[SourceSlice]) -> list[Dataset]:
    """ContourSequence items of the boolean ``(X, Y, Z)`` mask of one label on every slice."""
    items = []
    for k in np.flatnonzero(np.any(binary, axis=(0, 1))):
        for values in _contour_values(binary[:, :, k].T, slices[k]):  # (rows, columns)
            items.append(_contour_item(values, slices[k], len(items) + 1))
    return items


def _voxel_mm3(slices: list[SourceSlice]) -> float:
    """Voxel volume of the series: pixel spacing times the slice gap (SliceThickness, else 1 mm, for one slice)."""
    if len(slices) > 1:
        gap = float(np.median(np.diff([slices[0].normal @ s.ipp for s in slices])))
    else:
        gap = float(slices[0].ds.get("SliceThickness", 1.0) or 1.0)
    return slices[0].dr * slices[0].dc * abs(gap)


def _references(slices: list[SourceSlice]) -> Dataset:
    """ReferencedFrameOfReferenceSequence item listing every source image by series."""
    by_series: dict[str, list[SourceSlice]] = {}
    for s in slices:
        by_series.setdefault(str(s.ds.get("SeriesInstanceUID", "")), []).append(s)
    series_items = []
    for uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = uid
        series.ContourImageSequence = DicomSequence([_image_ref(s) for s in members])
        series_items.append(series)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_REF_CLASS
    study.ReferencedSOPInstanceUID = slices[0].ds.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence(series_items)
    frame = Dataset()
    frame.FrameOfReferenceUID = slices[0].ds.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _base_dataset(source: Dataset, series_description: str, series_number: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for key in _PATIENT_STUDY_TAGS:
        setattr(ds, key, source.get(key, ""))
    if "StudyDescription" in source:
        ds.StudyDescription = source.StudyDescription
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "clinseg"
    ds.SoftwareVersions = package_version()
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, time
    return ds


def write_rtstruct(
    mask,
    source_files: Sequence[str | os.PathLike],
    labels: Mapping[int, str],
    path: str | os.PathLike,
    *,
    structure_set_label: str = "clinseg",
    algorithm_name: str = "clinseg",
    series_description: str = "clinseg RT structures",
    series_number: int = 301,
    min_component_mm3: float = MIN_COMPONENT_MM3,
    max_contours: int | None = MAX_CONTOURS,
) -> Path:
    """Write an RT Structure Set with one ROI per declared label of ``mask``, atomically.

    Before tracing, each label is cleaned up and held to a contour budget
    (:mod:`pipeline.outputs.contour_budget`; both warn when they change the mask).

    Args:
        mask: integer labels ``(X, Y, Z)`` or ``(1, X, Y, Z)`` (numpy, torch or MetaTensor) on the source grid:
            ``mask[i, j, k]`` is column ``i``, row ``j`` of ``source_files[k]``.
        source_files: the series' single-frame DICOM files, sorted ascending along the slice normal.
        labels: label id (1..255) -> ROI name; every label in the mask must be declared. ROINumber = label id.
        path: destination ``.dcm`` file.
        structure_set_label: StructureSetLabel (at most 16 characters).
        algorithm_name: ROIGenerationDescription of every ROI (at most 64 characters).
        series_description: the RTSTRUCT series' description.
        series_number: the RTSTRUCT series' number.
        min_component_mm3: 3D components, and enclosed holes, of a label smaller than this volume (mm³) are
            removed / filled first; 0 keeps the mask as it is.
        max_contours: most contours per ROI (the largest slice components are kept); ``None``: no budget.

    Returns:
        ``path``.

    Raises:
        ValueError: shape/slice mismatch, unsorted or multi-frame sources, sources of several frames of
            reference or studies, bad labels, or labels in the mask that are not declared.
    """
    arr = label_array(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask must be (X, Y, Z) or (1, X, Y, Z), got shape {arr.shape}")
    ids = check_labels(labels, arr)
    if not structure_set_label.strip() or len(structure_set_label) > 16:
        raise ValueError(f"structure_set_label must be 1..16 characters, got {structure_set_label!r}")
    if not algorithm_name.strip() or len(algorithm_name) > 64:
        raise ValueError(f"algorithm_name must be 1..64 characters, got {algorithm_name!r}")
    if min_component_mm3 < 0 or (max_contours is not None and max_contours < 1):
        raise ValueError(
            f"min_component_mm3 must be >= 0 and max_contours >= 1 or None, got {min_component_mm3}, {max_contours}"
        )
    slices = read_source_slices(source_files)
    _check_sources(slices, arr.shape)
    voxel_mm3 = _voxel_mm3(slices)
    arr = np.array(arr, copy=True)
    clean_labels(arr, {lid: labels[lid] for lid in ids}, int(np.ceil(min_component_mm3 / voxel_mm3)))

    ds = _base_dataset(slices[0].ds, series_description, series_number)
    ds.StructureSetLabel = structure_set_label
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_references(slices)])
    frame_uid = slices[0].ds.FrameOfReferenceUID
    ds.FrameOfReferenceUID = frame_uid  # Frame of Reference module, as the source images
    ds.PositionReferenceIndicator = slices[0].ds.get("PositionReferenceIndicator", "")
    rois, roi_contours, observations = [], [], []
    n_contours = 0
    for lid in ids:
        roi = Dataset()
        roi.ROINumber = lid
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = labels[lid]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = algorithm_name
        rois.append(roi)
        contour = Dataset()
        contour.ROIDisplayColor = [round(c * 255) for c in label_colour(lid, labels)]
        items = _contours(limit_contours(arr == lid, max_contours, labels[lid], voxel_mm3 / 1000.0), slices)
        if items:
            contour.ContourSequence = DicomSequence(items)
        contour.ReferencedROINumber = lid
        roi_contours.append(contour)
        n_contours += len(items)
        obs = Dataset()
        obs.ObservationNumber = lid
        obs.ReferencedROINumber = lid
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)

    path = Path(path)
    with atomic_write(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    logger.info(
        "wrote RTSTRUCT %s: %d ROIs, %d contours on %d slices", path.name, len(ids), n_contours, len(slices)
    )
    return path
