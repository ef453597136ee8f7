"""DICOM outputs pass dicom3tools' ``dciodvfy`` IOD validator without errors: RTSTRUCT and SEG, written on a
synthetic oblique series and on real CT series (3 dcmqi slices, 20 slices of a planning CT)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.outputs.dicom_seg import write_dicom_seg
from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.outputs.rtstruct import write_rtstruct
from tests.dicom_checks import dciodvfy_errors
from transforms.dicom.series import load_dicom


def _synthetic(tmp_path, _shared):
    affine = np.array([[0.0, 0.0, 2.5, -40], [0.9, 0.2, 0, 10], [-0.2, 0.9, 0, 5], [0, 0, 0, 1]])
    files = write_dicom_series(np.zeros((33, 34, 6)), affine, tmp_path / "ct", uid_seed="v")
    mask = np.zeros((33, 34, 6), np.uint8)
    mask[4:28, 5:30, 1:5] = 1
    mask[10:20, 12:22, 2:4] = 0  # a hole
    mask[14:16, 15:17, 2] = 2  # an island in it
    return mask, files


def _ct_3slice(_tmp_path, shared):
    _, _, meta = load_dicom(shared / "dcmqi" / "ct_3slice")
    mask = np.asarray(nib.load(shared / "dcmqi" / "liver_spine_seg.nii.gz").dataobj).astype(np.uint8)
    return mask, meta["dicom_files"]


def _planning_ct(_tmp_path, shared):
    image, _, meta = load_dicom(shared / "nsclc" / "LUNG1-001")
    hu = np.asarray(image)[:, :, 60:80]  # (X, Y, Z) HU: 20 slices through the lungs
    mask = np.where(hu > 200, 2, (hu > -300).astype(np.uint8)).astype(np.uint8)  # body with lung holes; bone
    return mask, meta["dicom_files"][60:80]


SERIES = {"synthetic": _synthetic, "ct_3slice": _ct_3slice, "planning_ct": _planning_ct}


@pytest.mark.parametrize(
    "series",
    [
        "synthetic",
        pytest.param("ct_3slice", marks=pytest.mark.realdata),
        pytest.param("planning_ct", marks=pytest.mark.realdata),
    ],
)
def test_rtstruct_and_seg_pass_dciodvfy(request, tmp_path, series):
    shared = request.getfixturevalue("shared_data") if series != "synthetic" else None
    mask, files = SERIES[series](tmp_path, shared)
    labels = {1: "organ", 2: "lesion"}
    rtstruct = write_rtstruct(mask, files, labels, tmp_path / "rtstruct.dcm")
    assert dciodvfy_errors(rtstruct) == []
    seg = write_dicom_seg(mask, files, labels, tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg) == []


def test_validator_reports_a_missing_type_1_attribute(tmp_path):
    """The check can fail: an RTSTRUCT without its Frame of Reference UID is reported."""
    mask, files = _synthetic(tmp_path, None)
    ds = pydicom.dcmread(write_rtstruct(mask, files, {1: "organ", 2: "lesion"}, tmp_path / "rtstruct.dcm"))
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    assert any("FrameOfReferenceUID" in line for line in dciodvfy_errors(tmp_path / "broken.dcm"))
