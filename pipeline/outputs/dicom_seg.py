"""DICOM Segmentation (SEG) output for masks predicted on a DICOM series, with highdicom.

Voxel order follows the shared convention: ``mask[i, j, k] = frame_k[j, i]`` where ``k`` indexes the source
slices sorted ascending along the normal ``cross(row_dir, col_dir)``; the caller passes the source files in
that order. For one enhanced multi-frame source file, the caller passes ``frame_numbers`` instead: the
1-based source frame of each slice ``k`` (the loader's ``meta["frame_numbers"]``); the file's frame order
may differ from the slice order. The SEG is BINARY with one segment per declared label (segment numbers 1..N
in ascending label-id order, so a bundle's labels get the same segment numbers in every case); frames with
no foreground are omitted. Each segment is labelled with the bundle's label name and coded, unless told
otherwise, with the generic SNOMED CT pair category "Tissue" (85756007) / type "Tissue" (85756007): always
true, never misleading. Pass ``property_codes`` for specific anatomy (e.g. ``codes.SCT.Liver``).

The SEG copies patient and study attributes from the source images, as the DICOM standard requires; nothing
of them is logged. RTSTRUCT output: :mod:`pipeline.outputs.rtstruct`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from transforms.io.atomic import atomic_write
from pipeline.outputs.dicom_common import (
    check_ascending,
    check_labels,
    check_slice_grid,
    package_version,
    read_source_headers,
)
from pipeline.core.arrays import label_array

__all__ = ["DEFAULT_PROPERTY_CODES", "read_dicom_seg", "write_dicom_seg"]

logger = logging.getLogger(__name__)

DEFAULT_PROPERTY_CODES: tuple[Code, Code] = (codes.SCT.Tissue, codes.SCT.Tissue)


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """Within the block, keep highdicom to warnings and errors (it logs every module it copies at INFO, nine
    lines a SEG over the progress bar) and drop its person-name warnings (they quote the patient's name).

    The ``highdicom`` logger's level is raised only while it inherits one (NOTSET), so a level a user set
    on purpose stands; it is restored on exit.
    """
    hd_logger = logging.getLogger("highdicom")
    inherits = hd_logger.level == logging.NOTSET
    if inherits:
        hd_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*person name.*", category=UserWarning)
            yield
    finally:
        if inherits:
            hd_logger.setLevel(logging.NOTSET)


def _n_frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _shared_geometry(ds: pydicom.Dataset, path: Path) -> None:
    """Put an enhanced image's orientation and pixel measures into its shared functional groups (in place).

    highdicom reads them only from there; many scanners store them per frame. Per-frame values must agree.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != _n_frames(ds):
        raise ValueError(
            f"source file {path}: needs a PerFrameFunctionalGroupsSequence with one item per frame "
            f"(NumberOfFrames={_n_frames(ds)})"
        )
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    shared = ds.SharedFunctionalGroupsSequence[0]
    for seq, key in (
        ("PlaneOrientationSequence", "ImageOrientationPatient"),
        ("PixelMeasuresSequence", "PixelSpacing"),
    ):
        if shared.get(seq):
            continue
        values = [g[seq][0].get(key) if g.get(seq) else None for g in per_frame]
        if any(v is None for v in values):
            raise ValueError(f"source file {path}: {key} is in neither the shared nor every per-frame {seq}")
        if np.ptp(np.asarray(values, dtype=float), axis=0).max() > 1e-4:
            raise ValueError(
                f"source file {path}: {key} differs between frames; a SEG needs one value for all"
            )
        shared[seq] = per_frame[0][seq]


def _frame_positions(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """``(F, 3)`` ImagePositionPatient of every frame of an enhanced image, in file order (mm, LPS)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    positions = []
    for number, group in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        item = group if group.get("PlanePositionSequence") else shared
        if not item.get("PlanePositionSequence"):
            raise ValueError(f"source file {path}: frame {number} has no PlanePositionSequence")
        positions.append(item.PlanePositionSequence[0].ImagePositionPatient)
    return np.asarray(positions, dtype=float)


def _check_frame_numbers(frame_numbers: Sequence[int], n_frames: int, nz: int, path: Path) -> list[int]:
    numbers = list(frame_numbers)
    if len(numbers) != nz:
        raise ValueError(
            f"frame_numbers must give one source frame per mask slice: mask has Z={nz}, got {len(numbers)}"
        )
    bad = [f for f in numbers if isinstance(f, bool) or int(f) != f or not 1 <= f <= n_frames]
    if bad:
        raise ValueError(f"frame_numbers must be 1-based frames of {path} (1..{n_frames}), got {bad}")
    numbers = [int(f) for f in numbers]
    repeated = sorted({f for f in numbers if numbers.count(f) > 1})
    if repeated:
        raise ValueError(f"frame_numbers must be distinct, got {repeated} more than once")
    return numbers


def _check_frame_source(
    headers: list[pydicom.Dataset],
    frame_numbers: Sequence[int] | None,
    source_files: Sequence[str | os.PathLike],
) -> None:
    """``frame_numbers`` goes with exactly one source file, and a multi-frame source needs it."""
    if frame_numbers is not None and len(headers) != 1:
        raise ValueError(
            f"frame_numbers is for a single multi-frame source file, got {len(headers)} source_files"
        )
    if frame_numbers is None and len(headers) == 1 and _n_frames(headers[0]) > 1:
        raise ValueError(
            f"source file {source_files[0]} has {_n_frames(headers[0])} frames: pass frame_numbers, "
            "the 1-based source frame of each slice (the loader's meta['frame_numbers'])"
        )


def _source_headers(
    source_files: list[Path], frame_numbers: Sequence[int] | None, shape: tuple[int, int, int]
) -> tuple[list[pydicom.Dataset], list[int] | None]:
    """Read and check the source headers; returns them and the checked ``frame_numbers``."""
    nz = shape[2]
    headers = read_source_headers(source_files)
    _check_frame_source(headers, frame_numbers, source_files)
    check_slice_grid(headers, shape, per_slice=frame_numbers is None)
    for path, ds in zip(source_files, headers):
        if "PerFrameFunctionalGroupsSequence" in ds or _n_frames(ds) > 1:
            _shared_geometry(ds, path)
    if frame_numbers is not None:
        frame_numbers = _check_frame_numbers(frame_numbers, _n_frames(headers[0]), nz, source_files[0])
    if nz > 1:
        if frame_numbers is None:
            iop = headers[0].ImageOrientationPatient
            ipp = [ds.ImagePositionPatient for ds in headers]
        else:
            iop = (
                headers[0]
                .SharedFunctionalGroupsSequence[0]
                .PlaneOrientationSequence[0]
                .ImageOrientationPatient
            )
            ipp = _frame_positions(headers[0], source_files[0])[np.asarray(frame_numbers) - 1]
        iop = np.asarray(iop, dtype=float)
        pos = np.asarray(ipp, dtype=float) @ np.cross(iop[:3], iop[3:])
        check_ascending(pos, "source_files" if frame_numbers is None else "frame_numbers")
    return headers, frame_numbers


def write_dicom_seg(
    mask,
    source_files: Sequence[str | os.PathLike],
    labels: Mapping[int, str],
    out_path: str | os.PathLike,
    *,
    algorithm_name: str = "clinseg",
    algorithm_version: str | None = None,
    series_description: str = "clinseg segmentation",
    series_number: int = 300,
    property_codes: Mapping[int, tuple[Code, Code]] | None = None,
    frame_numbers: Sequence[int] | None = None,
) -> Path:
    """Write a BINARY DICOM SEG for ``mask`` referencing ``source_files``, atomically.

    Args:
        mask: integer labels ``(X, Y, Z)`` (or ``(1, X, Y, Z)``; ``(X, Y)`` for a single slice) on the source
            grid: ``mask[i, j, k]`` is column ``i``, row ``j`` of ``source_files[k]`` (or of frame
            ``frame_numbers[k]`` of the single multi-frame source file).
        source_files: the series' single-frame DICOM files, sorted ascending along the slice normal; or
            one enhanced multi-frame file, with ``frame_numbers``.
        labels: label id -> name (the bundle's label names), background excluded; every label in the mask
            must be declared. One segment per declared label, numbered 1..N by ascending id.
        out_path: destination ``.dcm`` file.
        algorithm_name: recorded in the segments' algorithm identification and as the model name.
        algorithm_version: recorded likewise; defaults to the installed clinseg version.
        series_description: the SEG series' description.
        series_number: the SEG series' number.
        property_codes: optional label id -> (category, type) codes; default :data:`DEFAULT_PROPERTY_CODES`.
        frame_numbers: for a multi-frame source, the distinct 1-based source frame of each mask slice ``k``
            (the loader's ``meta["frame_numbers"]``), ascending along the slice normal in ``k``; source
            frames not listed are background.

    Returns:
        ``out_path``.

    Raises:
        ValueError: shape/slice mismatch, unsorted sources, bad or missing ``frame_numbers``, or labels in
            the mask that are not declared.
    """
    arr = label_array(mask)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    ids = check_labels(labels, arr)
    source_files = [Path(f) for f in source_files]
    headers, frame_numbers = _source_headers(source_files, frame_numbers, arr.shape)

    version = algorithm_version or package_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=version
    )
    property_codes = property_codes or {}
    descriptions = []
    for number, lid in enumerate(ids, start=1):
        category, prop_type = property_codes.get(lid, DEFAULT_PROPERTY_CODES)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=labels[lid],
                segmented_property_category=category,
                segmented_property_type=prop_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {lid}",
                tracking_uid=generate_uid(),
            )
        )
    lut = np.zeros(max(max(ids), int(arr.max())) + 1, dtype=np.uint8)
    lut[ids] = np.arange(1, len(ids) + 1)
    frames = np.ascontiguousarray(lut[arr].transpose(2, 1, 0))  # (Z, rows=Y, columns=X)
    if frame_numbers is not None:  # highdicom wants one plane per source frame, in the file's frame order
        planes = np.zeros((_n_frames(headers[0]), *frames.shape[1:]), dtype=frames.dtype)
        planes[np.asarray(frame_numbers) - 1] = frames
        frames = planes

    with _quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="clinseg",
            manufacturer_model_name=algorithm_name,
            software_versions=version,
            device_serial_number="none",
            series_description=series_description,
        )
    out_path = Path(out_path)
    with atomic_write(out_path) as tmp:
        seg.save_as(tmp)
    logger.info(
        "wrote DICOM SEG %s: %d segments, %d frames", out_path.name, len(ids), int(seg.NumberOfFrames)
    )
    return out_path


def read_dicom_seg(
    path: str | os.PathLike,
    source_files: Sequence[str | os.PathLike],
    labels: Mapping[int, str] | None = None,
    frame_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """Read a BINARY/LABELMAP DICOM SEG back onto its source slices as an ``(X, Y, Z)`` label array.

    Frames are matched to ``source_files`` through their referenced SOP Instance UIDs, so the output's
    slice ``k`` is ``source_files[k]`` (pass them sorted along the normal to get the shared voxel order);
    for a multi-frame source, through the referenced frame numbers, so slice ``k`` is source frame
    ``frame_numbers[k]``. Slices the SEG does not reference are background.

    Args:
        path: the SEG file.
        source_files: the referenced single-frame images, in the wanted slice order; or one multi-frame image.
        labels: label id -> name; when given, segments are mapped to ids by their segment label (e.g. a
            SEG written by :func:`write_dicom_seg`); otherwise values are the SEG's segment numbers.
        frame_numbers: for a multi-frame source, the 1-based source frame of each output slice.

    Returns:
        ``(X, Y, Z)`` array of label ids (or segment numbers), uint8 or uint16.

    Raises:
        ValueError: a segment label is not among ``labels``' names, or bad or missing ``frame_numbers``.
    """
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    _check_frame_source(headers, frame_numbers, source_files)
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    seg = hd.seg.segread(path)
    # many writers (e.g. dcmqi) omit SpatialLocationsPreserved, hence ignore_spatial_locations
    if frame_numbers is None:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            combine_segments=True,
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    else:
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uids[0],
            source_frame_numbers=_check_frame_numbers(
                frame_numbers, _n_frames(headers[0]), len(frame_numbers), Path(source_files[0])
            ),
            combine_segments=True,
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    volume = np.ascontiguousarray(pixels.transpose(2, 1, 0))
    if labels is None:
        return volume
    by_name = {name: int(lid) for lid, name in labels.items()}
    top = max([0, *by_name.values()])
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint16 if top > 255 else np.uint8)
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label
        if name not in by_name:
            raise ValueError(
                f"segment {number} of {str(path)!r} is labelled {name!r}, not one of {sorted(by_name)}"
            )
        lut[number] = by_name[name]
    return lut[volume]
