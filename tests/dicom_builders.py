"""Builders of DICOM test inputs shared by several test modules: oblique affines, enhanced multi-frame CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence


def oblique_affine() -> np.ndarray:
    a, b = np.deg2rad(25), np.deg2rad(-15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    return aff


def to_enhanced(paths: list[Path], out: Path, order: list[int], per_frame_geometry: bool = False) -> Path:
    """Merge single-slice files into one enhanced CT file with frames in ``order`` (as in test_dicom_loading);
    ``per_frame_geometry`` stores orientation and pixel spacing per frame instead of shared."""
    slices = [pydicom.dcmread(p) for p in paths]
    ds = slices[0].copy()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(order)
    geometry = Dataset()
    geometry.PixelMeasuresSequence = DicomSequence([Dataset()])
    geometry.PixelMeasuresSequence[0].PixelSpacing = ds.PixelSpacing
    geometry.PixelMeasuresSequence[0].SliceThickness = ds.SliceThickness
    geometry.PlaneOrientationSequence = DicomSequence([Dataset()])
    geometry.PlaneOrientationSequence[0].ImageOrientationPatient = ds.ImageOrientationPatient
    shared = Dataset() if per_frame_geometry else geometry
    shared.PixelValueTransformationSequence = DicomSequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        group = Dataset()
        group.PlanePositionSequence = DicomSequence([Dataset()])
        group.PlanePositionSequence[0].ImagePositionPatient = slices[k].ImagePositionPatient
        if per_frame_geometry:
            group.PixelMeasuresSequence = geometry.PixelMeasuresSequence
            group.PlaneOrientationSequence = geometry.PlaneOrientationSequence
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    for key in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
    ):
        delattr(ds, key)
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    ds.save_as(out)
    return out


def write_contours(files: list, contours: dict[str, list[tuple[int, np.ndarray]]], path: Path) -> Path:
    """An RT Structure Set over the series ``files`` whose ROIs hold exactly the given contours: ROI name ->
    ``(slice index, (N, 2) pixel (row, column) polygon)`` items, written in order (copies, holes as their own
    contours), each referencing its slice's image."""
    from pipeline.outputs.rtstruct import read_source_slices, write_rtstruct

    slices = read_source_slices(files)
    empty = np.zeros((slices[0].size[1], slices[0].size[0], len(slices)), np.uint8)
    names = {i + 1: name for i, name in enumerate(contours)}
    write_rtstruct(empty, files, names, path)
    ds = pydicom.dcmread(path)
    for roi in ds.ROIContourSequence:
        items = []
        for k, rc in contours[names[int(roi.ReferencedROINumber)]]:
            item = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = slices[k].sop_class, slices[k].uid
            item.ContourImageSequence = DicomSequence([image])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(rc)
            item.ContourNumber = len(items) + 1
            item.ContourData = [f"{v:.4f}" for v in slices[k].to_patient(np.asarray(rc, float)).ravel()]
            items.append(item)
        roi.ContourSequence = DicomSequence(items)
    ds.save_as(path, enforce_file_format=True)
    return path
