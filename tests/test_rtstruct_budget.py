"""RTSTRUCT output that planning systems take: tiny components cleaned up by default, a contour budget per
structure, a warning when either applies; a noisy prediction on the real planning CT stays small."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest

from pipeline.outputs.contour_budget import MAX_CONTOURS, MIN_COMPONENT_MM3
from pipeline.outputs.rtstruct import write_rtstruct
from pipeline.outputs.rtstruct_read import rtstruct_to_mask
from pipeline.synthetic.dicom_series import write_dicom_series
from transforms.dicom.series import load_dicom

_AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])  # 1.6 mm³ voxels: the 20 mm³ default is 13 voxels


def _contours(path) -> dict[str, int]:
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    return {names[int(r.ReferencedROINumber)]: len(r.get("ContourSequence", [])) for r in ds.ROIContourSequence}


@pytest.fixture()
def noisy(tmp_path):
    shape = (40, 36, 6)
    files = write_dicom_series(np.zeros(shape, np.int16), _AFFINE, tmp_path / "ct", uid_seed="n")
    clean = np.zeros(shape, np.uint8)
    clean[5:35, 5:30, :] = 1
    clean[15:22, 12:18, 1:5] = 2
    rng = np.random.default_rng(0)
    noisy = clean.copy()
    specks = rng.random(shape) < 0.03
    noisy[specks] = rng.integers(0, 3, size=int(specks.sum()))  # specks of every label, holes in the organ
    return files, clean, noisy


def test_tiny_components_are_cleaned_up_by_default_with_a_warning(noisy, tmp_path, caplog):
    files, clean, mask = noisy
    assert MIN_COMPONENT_MM3 == 20.0 and MAX_CONTOURS == 2000
    raw = write_rtstruct(mask, files, {1: "organ", 2: "lesion"}, tmp_path / "raw.dcm", min_component_mm3=0)
    np.testing.assert_array_equal(rtstruct_to_mask(raw, files), mask)  # 0: written as it is
    with caplog.at_level(logging.WARNING):
        out = write_rtstruct(mask, files, {1: "organ", 2: "lesion"}, tmp_path / "rs.dcm")
    assert any("'organ': clean-up removed" in r.getMessage() for r in caplog.records)
    assert sum(_contours(out).values()) < sum(_contours(raw).values()) / 5
    back = rtstruct_to_mask(out, files)
    for lid in (1, 2):  # the structures come back about as they were, before the noise
        assert 2 * np.sum((back == lid) & (clean == lid)) / (np.sum(back == lid) + np.sum(clean == lid)) > 0.9
    assert mask.max() == 2 and np.count_nonzero(mask != clean)  # the caller's mask is left alone


def test_contour_budget_keeps_the_largest_and_warns(tmp_path, caplog):
    files = write_dicom_series(np.zeros((30, 30, 2), np.int16), _AFFINE, tmp_path / "ct", uid_seed="b")
    mask = np.zeros((30, 30, 2), np.uint8)
    for i, size in enumerate((2, 3, 4, 5, 6)):  # five islands on slice 0, one on slice 1
        mask[1 + 6 * i : 1 + 6 * i + size, 1 : 1 + size, 0] = 1
    mask[10:20, 10:20, 1] = 1
    with caplog.at_level(logging.WARNING):
        out = write_rtstruct(mask, files, {1: "spots"}, tmp_path / "rs.dcm", min_component_mm3=0, max_contours=3)
    assert any("6 contours over the budget of 3" in r.getMessage() for r in caplog.records)
    back = rtstruct_to_mask(out, files)
    expected = mask.copy()
    expected[:19, :, 0] = 0  # the islands of 2x2, 3x3 and 4x4 pixels are dropped
    np.testing.assert_array_equal(back, expected)
    assert _contours(out) == {"spots": 3}
    with pytest.raises(ValueError, match="max_contours >= 1"):
        write_rtstruct(mask, files, {1: "spots"}, tmp_path / "bad.dcm", max_contours=0)


@pytest.mark.realdata
def test_noisy_prediction_on_the_planning_ct_stays_small(shared_data, tmp_path):
    """LUNG1-001's structures with 1 % of the voxels turned to random labels (a barely trained model) write
    about a thousand contours, not hundreds of thousands."""
    folder = shared_data / "nsclc" / "LUNG1-001"
    files = load_dicom(folder)[2]["dicom_files"]
    (planned,) = [f for f in folder.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT"]
    labels = {1: "GTV-1", 2: "Lung L", 3: "Lung R", 4: "Spinal cord"}
    clean = rtstruct_to_mask(planned, files, labels)
    rng = np.random.default_rng(0)
    noise = rng.random(clean.shape)
    mask = clean.copy()
    mask[noise < 0.01] = rng.integers(1, 5, size=int((noise < 0.01).sum()))
    out = write_rtstruct(mask, files, labels, tmp_path / "rs.dcm")
    counts = _contours(out)
    assert sum(counts.values()) < 2000 and max(counts.values()) <= MAX_CONTOURS
    assert out.stat().st_size < 5e6
    back = rtstruct_to_mask(out, files, labels)
    for lid in (2, 3):
        assert 2 * np.sum((back == lid) & (clean == lid)) / (np.sum(back == lid) + np.sum(clean == lid)) > 0.98
