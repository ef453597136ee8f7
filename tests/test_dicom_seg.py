"""DICOM SEG: a real third-party SEG reads onto its CT grid; our SEGs round-trip on real and oblique synthetic
series, carry the declared segments, and land at the right place in patient space."""

from __future__ import annotations

import logging
import warnings

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.outputs.dicom_seg import read_dicom_seg, write_dicom_seg
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.dicom_builders import oblique_affine

LIVER_SPINE = {1: "Liver", 2: "Spine"}


def _sorted_along_normal(files):
    """The shared convention's slice order: ascending along cross(row_dir, col_dir)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    keys = [float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))) for h in headers]
    return [f for _, f in sorted(zip(keys, files, strict=True))]


@pytest.fixture(scope="module")
def ct3(shared_data):
    return _sorted_along_normal(sorted((shared_data / "dcmqi" / "ct_3slice").glob("*.dcm")))


@pytest.mark.realdata
def test_dcmqi_liver_seg_reads_onto_ct_grid(shared_data, ct3):
    ref = nib.load(shared_data / "dcmqi" / "liver_seg.nii.gz")
    # the NIfTI's affine is the CT grid of the convention (LPS->RAS of the sorted slices)
    first = pydicom.dcmread(ct3[0], stop_before_pixels=True)
    np.testing.assert_allclose(
        ref.affine[:3, 3],
        [-v for v in first.ImagePositionPatient[:2]] + [first.ImagePositionPatient[2]],
        atol=1e-3,
    )
    got = read_dicom_seg(shared_data / "dcmqi" / "liver_seg.dcm", ct3)
    assert got.shape == ref.shape == (512, 512, 3)
    np.testing.assert_array_equal(got, np.asarray(ref.dataobj))
    assert int((got > 0).sum()) == 107_098
    assert read_dicom_seg(shared_data / "dcmqi" / "liver_seg.dcm", ct3, {5: "Liver"}).max() == 5


@pytest.mark.realdata
def test_own_seg_round_trip_on_real_ct(shared_data, ct3, tmp_path, caplog):
    mask = np.asarray(nib.load(shared_data / "dcmqi" / "liver_spine_seg.nii.gz").dataobj).astype(np.uint8)
    assert set(np.unique(mask)) == {0, 1, 2}
    patient = str(pydicom.dcmread(ct3[0], stop_before_pixels=True).PatientName)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        out = write_dicom_seg(
            mask, ct3, LIVER_SPINE, tmp_path / "seg.dcm", algorithm_version="1.2.3", series_description="test"
        )
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert patient and not any(patient in s for s in said), "patient name leaked into a warning or log"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]
    np.testing.assert_array_equal(read_dicom_seg(out, ct3, LIVER_SPINE), mask)
    np.testing.assert_array_equal(read_dicom_seg(out, ct3), mask)  # segment numbers = ranks of ids 1, 2

    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY" and seg.SeriesDescription == "test"
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == ["Liver", "Spine"]
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_category.value == "85756007"
    assert desc.algorithm_identification[0].AlgorithmVersion == "1.2.3"
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct3}


def test_oblique_synthetic_series_round_trip_and_patient_space(tmp_path):
    aff = oblique_affine()
    shape = (33, 34, 5)
    hu = np.random.default_rng(0).integers(-1000, 1000, shape)
    files = write_dicom_series(hu, aff, tmp_path / "ct", uid_seed="seg-test")
    mask = np.zeros(shape, np.uint8)
    mask[5:20, 3:10, 1:4] = 2
    mask[25:30, 20:30, 0] = 7
    labels = {2: "liver", 7: "spleen", 9: "absent organ"}
    out = write_dicom_seg(mask, files, labels, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(out, files, labels), mask)

    # independent check through highdicom's own geometry: every SEG voxel lands on our voxel in LPS space
    seg = hd.seg.segread(out)
    assert seg.segment_numbers == [1, 2, 3]
    vol = seg.get_volume(combine_segments=True)
    to_ours = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff) @ vol.affine
    idx = np.argwhere(vol.array > 0)
    ijk = (to_ours[:3, :3] @ idx.T + to_ours[:3, 3:4]).T
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
    ijk = np.round(ijk).astype(int)
    seg_number_to_id = np.array([0, 2, 7, 9])
    np.testing.assert_array_equal(mask[tuple(ijk.T)], seg_number_to_id[vol.array[tuple(idx.T)]])
    assert len(idx) == int((mask > 0).sum())


def test_empty_mask_writes_a_valid_seg(tmp_path):
    files = write_dicom_series(
        np.zeros((9, 8, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "ct", uid_seed="e"
    )
    out = write_dicom_seg(np.zeros((9, 8, 3), np.uint8), files, {1: "lesion"}, tmp_path / "seg.dcm")
    assert read_dicom_seg(out, files, {1: "lesion"}).sum() == 0


@pytest.mark.parametrize("preset", [logging.NOTSET, logging.DEBUG])
def test_highdicom_logs_only_warnings_while_writing_unless_set_otherwise(tmp_path, caplog, preset):
    """highdicom's INFO lines (one per copied module) stay out of the batch output; a level set on purpose
    stands, and the logger is left as it was."""
    files = write_dicom_series(
        np.zeros((9, 8, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "ct", uid_seed="q"
    )
    hd_logger = logging.getLogger("highdicom")
    hd_logger.setLevel(preset)
    try:
        with caplog.at_level(logging.DEBUG):
            write_dicom_seg(np.ones((9, 8, 3), np.uint8), files, {1: "a"}, tmp_path / "seg.dcm")
        assert hd_logger.level == preset
    finally:
        hd_logger.setLevel(logging.NOTSET)
    chatter = [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]
    assert (len(chatter) > 0) == (preset == logging.DEBUG)
    assert any(r.name == "pipeline.outputs.dicom_seg" for r in caplog.records)  # our own INFO line still comes


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    return write_dicom_series(np.zeros((9, 8, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), folder, uid_seed="s")


@pytest.mark.parametrize(
    "mask, order, labels, match",
    [
        (np.zeros((9, 8, 2), np.uint8), None, {1: "a"}, "one file per slice"),
        (np.zeros((8, 9, 3), np.uint8), None, {1: "a"}, "columns x rows"),
        (np.zeros((9, 8, 3), np.uint8), [2, 1, 0], {1: "a"}, "sorted ascending"),
        (np.full((9, 8, 3), 3, np.uint8), None, {1: "a"}, r"labels \[3\] that are not declared"),
        (np.zeros((9, 8, 3), np.uint8), None, {}, "at least one foreground label"),
        (np.zeros((9, 8, 3), np.uint8), None, {0: "background"}, "positive integer ids"),
        (np.zeros((9, 8, 3), np.uint8), None, {1: "a", 2: "a"}, "distinct names"),
        (np.zeros((9, 8, 3), np.uint8), None, {1: "x" * 65}, "at most 64 characters"),
        (np.full((9, 8, 3), 0.5, np.float32), None, {1: "a"}, "integer labels"),
    ],
)
def test_input_errors(tmp_path, small_series, mask, order, labels, match):
    files = small_series if order is None else [small_series[k] for k in order]
    with pytest.raises(ValueError, match=match):
        write_dicom_seg(mask, files, labels, tmp_path / "seg.dcm")
    assert not list(tmp_path.iterdir())


def test_read_rejects_unknown_segment_label(tmp_path, small_series):
    mask = np.zeros((9, 8, 3), np.uint8)
    mask[2:4, 2:4, 1] = 1
    out = write_dicom_seg(mask, small_series, {1: "kidney"}, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="'kidney', not one of"):
        read_dicom_seg(out, small_series, {1: "liver"})
