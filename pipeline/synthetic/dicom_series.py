"""Write a volume as a DICOM image series (one file per slice) with exact, documented geometry.

Geometry follows the project convention: the input ``hu`` has shape ``(X, Y, Z)`` and ``affine_ras`` maps voxel
indices to RAS millimetres. DICOM stores LPS, so ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``; slice ``k``
holds ``pixel_array[j, i] = hu[i, j, k]``, ``row_dir`` (IOP[0:3]) is the direction of ``i``, ``col_dir``
(IOP[3:6]) the direction of ``j``, and slices ascend along ``cross(row_dir, col_dir)``. Reading the series back
with :func:`transforms.dicom.series.load_dicom_series` gives the same voxels and affine.

No real patient data is written: the patient is ``patient_pseudonym`` and dates are fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = ["lps_geometry_from_affine", "write_dicom_series"]

logger = logging.getLogger(__name__)

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_INTERCEPT = {"CT": -1024.0, "MR": 0.0}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_geometry_from_affine(affine_ras: np.ndarray) -> dict[str, np.ndarray]:
    """Split a RAS voxel->world affine into DICOM geometry (LPS, mm).

    Args:
        affine_ras: ``(4, 4)`` voxel->world affine in RAS millimetres with ``det(affine[:3, :3]) > 0`` and
            orthogonal direction columns (no shear, no gantry tilt).

    Returns:
        ``row_dir``, ``col_dir`` (unit vectors, LPS), ``pixel_spacing`` ``[row spacing, column spacing]`` (mm),
        ``slice_step`` (LPS vector between consecutive slices, mm), ``origin`` (IPP of slice 0, LPS mm).

    Raises:
        ValueError: the affine is not 4x4 and finite, has a non-positive determinant or non-orthogonal columns.
    """
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise ValueError(f"affine_ras must be a finite 4x4 matrix, got shape {affine_ras.shape}.")
    lps = _LPS_FROM_RAS @ affine_ras
    cols = lps[:3, :3]
    det = float(np.linalg.det(cols))
    if det <= 0:
        raise ValueError(
            f"affine_ras must have det(affine[:3, :3]) > 0 so slices ascend along the DICOM normal "
            f"cross(row_dir, col_dir); got det={det:.6g}. Flip the last axis of the volume and the affine first."
        )
    norms = np.linalg.norm(cols, axis=0)
    units = cols / norms
    gram = units.T @ units
    off_diag = float(np.max(np.abs(gram - np.eye(3))))
    if off_diag > 1e-4:
        raise ValueError(
            f"affine_ras direction columns must be orthogonal (DICOM images have no shear or gantry tilt); "
            f"largest |cos| between columns is {off_diag:.6g}."
        )
    return {
        "row_dir": units[:, 0],
        "col_dir": units[:, 1],
        "pixel_spacing": np.array([norms[1], norms[0]]),
        "slice_step": cols[:, 2],
        "origin": lps[:3, 3],
    }


def _ds_str(value: float) -> str:
    """Format a float for a DS element (at most 16 characters, as many digits as fit)."""
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"


def _validate_volume(hu: np.ndarray, modality: str) -> np.ndarray:
    """Return the stored int16 values for ``hu`` ``(X, Y, Z)``; raise on non-integer or out-of-range values."""
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}.")
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu must have shape (X, Y, Z) with every size >= 1, got {hu.shape}.")
    if hu.dtype.kind == "f":
        if not np.all(np.isfinite(hu)):
            raise ValueError("hu contains NaN or infinite values.")
        if not np.array_equal(hu, np.round(hu)):
            raise ValueError("hu must be integer-valued (DICOM stores integers); round it first.")
    elif hu.dtype.kind not in "iub":
        raise ValueError(f"hu must be a numeric array, got dtype {hu.dtype}.")
    stored = hu.astype(np.int64) - int(_INTERCEPT[modality])
    lo, hi = int(stored.min()), int(stored.max())
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        raise ValueError(
            f"hu values {lo + int(_INTERCEPT[modality])}..{hi + int(_INTERCEPT[modality])} do not fit int16 "
            f"storage with RescaleIntercept {_INTERCEPT[modality]:g}."
        )
    return stored.astype(np.int16)


def _uid(seed: str | None, *parts: str) -> str:
    """A valid UID: deterministic from ``seed`` and ``parts`` when a seed is given, random otherwise."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *parts])


def write_dicom_series(
    hu: np.ndarray,
    affine_ras: np.ndarray,
    out_dir: Path,
    *,
    modality: str = "CT",
    series_description: str = "clinseg synthetic CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    uid_seed: str | None = None,
    file_names: Sequence[str] | None = None,
    patient_pseudonym: str = "PHANTOM",
) -> list[Path]:
    """Write ``hu`` as one uncompressed DICOM file per slice (explicit VR little endian).

    Args:
        hu: ``(X, Y, Z)`` integer-valued intensities (HU for CT), stored as int16 with RescaleSlope 1 and
            RescaleIntercept -1024 (CT) or 0 (MR).
        affine_ras: ``(4, 4)`` voxel->world affine (RAS, mm); ``det > 0``, orthogonal columns.
        out_dir: folder to write into (created if missing).
        modality: ``"CT"`` (CT Image Storage) or ``"MR"`` (MR Image Storage).
        series_description: SeriesDescription text.
        series_uid, study_uid, frame_of_reference_uid: UIDs to use; generated when ``None``.
        uid_seed: makes every generated UID deterministic (same seed, same UIDs).
        file_names: one file name per slice, slice ``k`` -> ``file_names[k]`` (any names, with or without
            ``.dcm``); default ``slice_0000.dcm`` ...
        patient_pseudonym: written as PatientName and PatientID; never a real identity.

    Returns:
        The written paths in slice order ``k = 0 .. Z-1``.

    Raises:
        ValueError: bad volume, affine, modality or file names.
    """
    stored = _validate_volume(hu, modality)
    geo = lps_geometry_from_affine(affine_ras)
    n_x, n_y, n_z = stored.shape
    if file_names is None:
        file_names = [f"slice_{k:04d}.dcm" for k in range(n_z)]
    file_names = list(file_names)
    if len(file_names) != n_z or len(set(file_names)) != n_z:
        raise ValueError(f"file_names must hold {n_z} distinct names (one per slice), got {len(file_names)}.")
    bad = [name for name in file_names if Path(name).name != name or name in ("", ".", "..", "DICOMDIR")]
    if bad:
        raise ValueError(f"file_names must be plain file names without folders, got {bad[:3]}.")

    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = series_uid or _uid(uid_seed, "series", series_description)
    frame_uid = frame_of_reference_uid or _uid(uid_seed, "frame")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iop = [_ds_str(v) for v in (*geo["row_dir"], *geo["col_dir"])]
    spacing = [_ds_str(v) for v in geo["pixel_spacing"]]
    thickness = _ds_str(float(np.linalg.norm(geo["slice_step"])))
    normal = np.cross(geo["row_dir"], geo["col_dir"])

    paths = []
    for k in range(n_z):
        sop_uid = _uid(uid_seed, "sop", series_uid, str(k)) if uid_seed is not None else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = out_dir / file_names[k]
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = _SOP_CLASS[modality]
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "clinseg"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "clinseg synthetic study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_pseudonym
        ds.PatientID = patient_pseudonym
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds_str(v) for v in geo["origin"] + k * geo["slice_step"]]
        ds.ImageOrientationPatient = iop
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SliceLocation = _ds_str(float(np.dot(geo["origin"] + k * geo["slice_step"], normal)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = n_y
        ds.Columns = n_x
        ds.PixelSpacing = spacing
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds_str(_INTERCEPT[modality])
        ds.RescaleSlope = "1"
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T, dtype="<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d-slice %s series %s to %s", n_z, modality, series_uid, out_dir)  # callers may move it
    return paths
