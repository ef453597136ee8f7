"""Folders of DICOM studies with RTSTRUCT or DICOM SEG labels: one case per sub-folder (or the folder itself).

Per case: the one RTSTRUCT or SEG object is found by header, the image series it references is chosen (else the
only image series beside it; RTPLAN/RTDOSE and other non-image objects are ignored), the mapped structures are
rasterised onto that series' grid (``labels/<case>.nii.gz``, the overlap rule of
:mod:`pipeline.datasets.structures`) and the image channel references the case folder when it holds one image
series (LoadScand reads it), else the series is written as ``images/<case>_<channel>.nii.gz``.
A mapped structure absent (or empty) in a case is reported; the case is skipped unless ``allow_missing``.
The report gives per case each structure's own volume and its volume in the label map, the overlapping voxels
per pair, the duplicated contours merged (structure -> slice index -> copies) and the contours placed by plane
position because the image they reference is not in the series.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipeline.datasets.model import Case, LayoutResult, Skipped, channel_name, safe_name
from pipeline.datasets.nifti_files import write_image
from pipeline.datasets.structures import combine, match_structures
from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.rtstruct_read import RoiRaster, rasterise_rois, read_rtstruct
from transforms.dicom.series import series_to_volume
from transforms.dicom.discovery import SeriesInfo, discover_series, read_header, walk_files
from transforms.io.errors import ScanLoadError

LABEL_MODALITIES = ("RTSTRUCT", "SEG")


def case_folders(src: Path) -> list[Path]:
    """The case folders of ``src``: ``src`` itself when it holds DICOM files directly, else its sub-folders."""
    direct = [p for p in src.iterdir() if p.is_file() and read_header(p) is not None]
    return [src] if direct else sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def _label_objects(folder: Path) -> list[tuple[Path, Dataset]]:
    out = []
    for path in walk_files(folder):
        item = read_header(path)
        if item is not None and str(item.header.get("Modality", "")) in LABEL_MODALITIES:
            out.append((path, item.header))
    return out


def _referenced_series(ds: Dataset) -> set[str]:
    """SeriesInstanceUIDs an RTSTRUCT (via its frames of reference) or a SEG references."""
    uids = {
        str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s
    }
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            uids |= {str(s.SeriesInstanceUID) for s in study.get("RTReferencedSeriesSequence", [])}
    return uids


def _choose_series(series: list[SeriesInfo], ds: Dataset) -> SeriesInfo:
    hits = [s for s in series if s.uid in _referenced_series(ds)]
    if len(hits) == 1:
        return hits[0]
    if len(series) == 1:
        return series[0]
    raise ValueError(
        f"the {ds.Modality} object references none of the {len(series)} image series in the folder "
        "(or several): keep only its image series beside it"
    )


def _rtstruct_masks(
    path: Path, files: list[str], rois: dict[int, list[str]], rule: str
) -> tuple[dict[int, np.ndarray], dict[str, RoiRaster]]:
    """Per-label boolean ``(X, Y, Z)`` masks (the label's source ROIs united) and the source ROIs' rasters."""
    rasters = rasterise_rois(path, files, {n for names in rois.values() for n in names}, rule=rule)
    masks = {v: np.logical_or.reduce([rasters[n].mask for n in names]) for v, names in rois.items()}
    return masks, rasters


def _contour_notes(case: str, rasters: dict[str, RoiRaster], result: LayoutResult) -> dict[str, object]:
    """Report fields on the contours read (duplicates merged per ROI and slice, references placed by plane),
    and a dataset note when references did not resolve."""
    total, unresolved = sum(r.contours for r in rasters.values()), sum(r.unresolved for r in rasters.values())
    if unresolved:
        result.notes.append(
            f"{case}: {unresolved} of {total} contours reference images absent from the series; "
            "placed on the slice of their plane position"
        )
    return {
        "contours": total,
        "contours_placed_by_plane": unresolved,
        "duplicate_contours_merged": {
            name: {str(k): n for k, n in sorted(r.duplicates.items())} for name, r in rasters.items() if r.duplicates
        },
    }


def _seg_masks(
    path: Path, files: list[str], segments: dict[int, list[str]], numbers: dict[str, list[int]]
) -> dict[int, np.ndarray]:
    """Per-label boolean ``(X, Y, Z)`` masks from a SEG's segments, each segment read on its own so that
    overlapping segments reach the overlap rule (frames matched to ``files`` by SOP Instance UID, as
    :func:`pipeline.outputs.dicom_seg.read_dicom_seg`)."""
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    seg = hd.seg.segread(path)
    wanted = sorted({n for names in segments.values() for name in names for n in numbers[name]})
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=wanted,
        combine_segments=False,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,  # many writers (e.g. dcmqi) omit SpatialLocationsPreserved
    )  # (Z, rows, columns, segments)
    by_number = {n: pixels[..., i].transpose(2, 1, 0) > 0 for i, n in enumerate(wanted)}
    return {
        v: np.logical_or.reduce([by_number[n] for name in names for n in numbers[name]])
        for v, names in segments.items()
    }


def _structure_names(path: Path, ds: Dataset) -> tuple[list[str], dict[str, list[int]]]:
    """Structure names in a label object (ROIs with contours / SEG segments) and SEG segment numbers by name."""
    if ds.Modality == "SEG":
        numbers: dict[str, list[int]] = {}
        for seg in ds.get("SegmentSequence", []):
            numbers.setdefault(str(seg.SegmentLabel), []).append(int(seg.SegmentNumber))
        return list(numbers), numbers
    return [name for name, contours in read_rtstruct(path).items() if contours], {}


def _import_case(
    folder: Path,
    case: str,
    structures: Mapping[int, list[str]],
    dest: Path,
    result: LayoutResult,
    allow_missing: bool,
    contour_rule: str,
) -> tuple[Case, str]:
    """One case folder as a :class:`Case` (label written under ``dest``) and its image modality.

    Raises:
        ValueError: no or several label objects, no usable image series, missing structures (not allowed).
    """
    objects = _label_objects(folder)
    if len(objects) != 1:
        raise ValueError(
            f"{len(objects)} RTSTRUCT/SEG objects in the case folder; keep exactly one (one case per label object)"
        )
    path, ds = objects[0]
    series = discover_series(folder)
    if not series:
        raise ValueError("no DICOM image series beside the label object")
    chosen = _choose_series(series, ds)
    volume, affine, meta = series_to_volume(chosen)
    files = meta["dicom_files"]
    found, numbers = _structure_names(path, ds)
    matched = {v: names for v, names in match_structures(structures, found).items() if names}
    contour_notes: dict[str, object] = {}
    if ds.Modality == "SEG":
        masks = _seg_masks(path, files, matched, numbers) if matched else {}
    else:
        masks, rasters = _rtstruct_masks(path, files, matched, contour_rule)
        contour_notes = _contour_notes(case, rasters, result)
    present = {v: matched[v] for v, mask in masks.items() if mask.any()}
    missing = [names[0] for v, names in structures.items() if v not in present]
    if missing:
        result.missing[case] = missing
        if not allow_missing:
            raise ValueError(
                f"missing structure(s) {missing} (absent or empty; --allow-missing takes the case with them "
                "left unlabelled)"
            )
    if not present:
        raise ValueError("none of the mapped structures is present")
    labels, overlaps = combine({v: masks[v] for v in present})
    label_path = write_mask_nifti(labels, affine, dest / "labels" / f"{case}.nii.gz")
    name = channel_name(chosen.modality or "image")
    if len(series) == 1:
        image = str(folder.resolve())
        converted = [str(label_path)]
    else:
        image_path = write_image(volume, affine, dest / "images" / f"{case}_{name}.nii.gz")
        image, converted = str(image_path), [str(image_path), str(label_path)]
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    item = Case(case, {name: image}, str(label_path), converted=converted)
    item.details = {
        "label_object": ds.Modality,
        "series_uid": chosen.uid,
        "matched": {structures[v][0]: names for v, names in present.items()},
        "unmapped": sorted(set(found) - {n for names in present.values() for n in names}),
        "volumes_ml": {
            structures[v][0]: {
                "structure": round(float(np.count_nonzero(masks[v])) * voxel_ml, 2),
                "label_map": round(float(np.count_nonzero(labels == v)) * voxel_ml, 2),
            }
            for v in present
        },
        "overlap_voxels": {
            "&".join(structures[int(v)][0] for v in pair.split("&")): n for pair, n in overlaps.items()
        },
        **contour_notes,
    }
    if missing:
        item.extra["missing_labels"] = missing
    return item, chosen.modality


def read_dicom_studies(
    src: Path,
    dest: Path,
    structures: Mapping[int, list[str]],
    *,
    allow_missing: bool = False,
    contour_rule: str = "centre",
) -> LayoutResult:
    """Import every case folder of ``src`` (see the module docstring); labels are written under ``dest``.

    Args:
        src: a folder of case folders (or one case folder) of DICOM files.
        dest: the import's output folder.
        structures: label number -> structure names (first = label name), :func:`parse_structures`.
        allow_missing: take a case lacking some mapped structures instead of skipping it: they are 0 in the label
            file and listed in the entry's ``missing_labels`` (which the loss and the metrics ignore for the case,
            :mod:`transforms.labels.partial_labels`) and in the report.
        contour_rule: RTSTRUCT fill rule, ``"centre"`` or ``"boundary"`` (:mod:`pipeline.outputs.contour_fill`).
    """
    labels = {0: "background", **{v: names[0] for v, names in structures.items()}}
    result = LayoutResult("dicom", src, {}, labels)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    for folder in case_folders(src):
        case = safe_name(folder.name)
        if any(c.case == case for c in result.cases) or any(s.case == case for s in result.skipped):
            result.skipped.append(
                Skipped(f"{case} ({folder.name})", "case id already used by another folder")
            )
            continue
        try:
            item, modality = _import_case(folder, case, structures, dest, result, allow_missing, contour_rule)
        except (ValueError, ScanLoadError) as err:
            result.skipped.append(Skipped(case, str(err)))
            continue
        name = next(iter(item.channels))
        if result.channels and name not in result.channels:
            result.skipped.append(
                Skipped(case, f"image modality {modality} differs from the dataset's {result.channels}")
            )
            for written in item.converted:
                Path(written).unlink(missing_ok=True)
            continue
        result.channels[name] = modality
        result.cases.append(item)
    return result
