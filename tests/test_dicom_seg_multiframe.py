"""DICOM SEG on an enhanced multi-frame CT: segment frames land on the right source frames (also when the
file's frame order differs from the volume's slice order), read back onto the volume, and bad
``frame_numbers`` are refused."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from pipeline.outputs.dicom_seg import read_dicom_seg, write_dicom_seg
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.dicom_builders import oblique_affine, to_enhanced
from transforms.io.scan import load_scan

SHAPE = (9, 8, 5)
SHUFFLED = [3, 0, 4, 1, 2]  # file frame f + 1 holds volume slice SHUFFLED[f]
LABELS = {2: "liver", 7: "spleen", 9: "absent organ"}


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:7, 1:5, 1:4] = 2
    mask[6:9, 5:8, 3] = 7
    mask[0, 0, 0] = 7  # slice 0 holds one segment only
    return mask


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    hu = np.random.default_rng(0).integers(-1000, 1000, SHAPE)
    return write_dicom_series(hu, oblique_affine(), folder, uid_seed="seg-mf")


@pytest.fixture(scope="module")
def enhanced(series, tmp_path_factory):
    """``(path, frame_numbers)`` of the shuffled enhanced file, as the loader reports them."""
    path = to_enhanced(series, tmp_path_factory.mktemp("mf") / "ct.dcm", SHUFFLED)
    image = load_scan(path)
    assert image.meta["dicom_files"] == [str(path)]
    assert image.meta["frame_numbers"] == [SHUFFLED.index(k) + 1 for k in range(SHAPE[2])]
    return path, image.meta["frame_numbers"]


@pytest.mark.parametrize("order", [list(range(SHAPE[2])), SHUFFLED], ids=["file-order", "shuffled"])
def test_round_trip_and_patient_space(tmp_path, series, order):
    path = to_enhanced(series, tmp_path / "ct.dcm", order)
    image = load_scan(path)
    frame_numbers = image.meta["frame_numbers"]
    mask = _mask()
    out = write_dicom_seg(
        mask, image.meta["dicom_files"], LABELS, tmp_path / "seg.dcm", frame_numbers=frame_numbers
    )
    np.testing.assert_array_equal(read_dicom_seg(out, [path], LABELS, frame_numbers=frame_numbers), mask)
    seg_numbers = read_dicom_seg(out, [path], frame_numbers=frame_numbers)
    np.testing.assert_array_equal(seg_numbers, np.array([0, 0, 1, 0, 0, 0, 0, 2, 0, 3])[mask])

    # independent check through highdicom's geometry: every SEG voxel lands on our voxel in LPS space
    vol = hd.seg.segread(out).get_volume(combine_segments=True)
    to_ours = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine.numpy()) @ vol.affine
    idx = np.argwhere(vol.array > 0)
    ijk = (to_ours[:3, :3] @ idx.T + to_ours[:3, 3:4]).T
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
    ijk = np.round(ijk).astype(int)
    np.testing.assert_array_equal(mask[tuple(ijk.T)], np.array([0, 2, 7, 9])[vol.array[tuple(idx.T)]])
    assert len(idx) == int((mask > 0).sum())


def test_seg_frames_reference_and_sit_on_their_source_frames(tmp_path, enhanced):
    path, frame_numbers = enhanced
    mask = _mask()
    out = write_dicom_seg(mask, [path], LABELS, tmp_path / "seg.dcm", frame_numbers=frame_numbers)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    src_positions = [
        g.PlanePositionSequence[0].ImagePositionPatient for g in src.PerFrameFunctionalGroupsSequence
    ]
    seg = pydicom.dcmread(out)
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [src.SOPInstanceUID]
    assert seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient == (
        src.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    )
    pixels = seg.pixel_array.reshape(-1, SHAPE[1], SHAPE[0])
    seen = set()
    for group, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert source.SpatialLocationsPreserved == "YES"
        number = int(source.ReferencedFrameNumber)
        np.testing.assert_allclose(
            [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in src_positions[number - 1]],
            atol=1e-4,
        )
        k = frame_numbers.index(number)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame, mask[:, :, k].T == [0, 2, 7, 9][segment])
        seen.add((k, segment))
    # one frame per slice and segment with foreground, none for empty ones
    assert seen == {
        (k, s) for k in range(SHAPE[2]) for s, lid in ((1, 2), (2, 7)) if (mask[:, :, k] == lid).any()
    }


def test_per_frame_geometry_and_subset_of_frames(tmp_path, series):
    path = to_enhanced(series, tmp_path / "ct.dcm", SHUFFLED, per_frame_geometry=True)
    frame_numbers = load_scan(path).meta["frame_numbers"]
    mask = _mask()
    out = write_dicom_seg(
        mask[:, :, 1:4], [path], LABELS, tmp_path / "seg.dcm", frame_numbers=frame_numbers[1:4]
    )
    expected = mask.copy()
    expected[:, :, [0, 4]] = 0  # frames outside the written slices are background
    np.testing.assert_array_equal(read_dicom_seg(out, [path], LABELS, frame_numbers=frame_numbers), expected)


def test_empty_mask_writes_a_valid_seg(tmp_path, enhanced):
    path, frame_numbers = enhanced
    out = write_dicom_seg(
        np.zeros(SHAPE, np.uint8), [path], LABELS, tmp_path / "seg.dcm", frame_numbers=frame_numbers
    )
    assert read_dicom_seg(out, [path], LABELS, frame_numbers=frame_numbers).sum() == 0


@pytest.mark.parametrize(
    "shape, files, numbers, match",
    [
        (SHAPE, "mf", [4, 1, 5, 2], "one source frame per mask slice: mask has Z=5, got 4"),
        (SHAPE, "mf", [4, 1, 5, 2, 4], r"distinct, got \[4\] more than once"),
        (SHAPE, "mf", [4, 1, 6, 2, 3], r"1-based frames of .*ct\.dcm \(1\.\.5\), got \[6\]"),
        (SHAPE, "mf", [0, 1, 5, 2, 3], r"\(1\.\.5\), got \[0\]"),
        (SHAPE, "mf", [4, 1.5, 5, 2, 3], r"got \[1\.5\]"),
        (SHAPE, "mf", [1, 2, 3, 4, 5], "frame_numbers must be sorted ascending along the slice normal"),
        (SHAPE, "series", [1, 2, 3, 4, 5], "single multi-frame source file, got 5 source_files"),
        (SHAPE, "mf", None, "has 5 frames: pass frame_numbers"),
        (
            (8, 9, 5),
            "mf",
            [2, 4, 5, 1, 3],
            r"source_files\[0\] is 9x8 \(columns x rows\) but the mask slice is 8x9",
        ),
    ],
)
def test_write_errors(tmp_path, series, enhanced, shape, files, numbers, match):
    sources = list(series) if files == "series" else [enhanced[0]]
    with pytest.raises(ValueError, match=match):
        write_dicom_seg(
            np.zeros(shape, np.uint8), sources, LABELS, tmp_path / "seg.dcm", frame_numbers=numbers
        )
    assert not list(tmp_path.iterdir())


def test_per_frame_orientations_that_differ_are_refused(tmp_path, series):
    path = to_enhanced(series, tmp_path / "ct.dcm", SHUFFLED, per_frame_geometry=True)
    ds = pydicom.dcmread(path)
    tilted = Dataset()
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = DicomSequence([tilted])
    ds.save_as(path)
    with pytest.raises(ValueError, match="ImageOrientationPatient differs between frames"):
        write_dicom_seg(
            np.zeros(SHAPE, np.uint8), [path], LABELS, tmp_path / "seg.dcm", frame_numbers=[1, 2, 3, 4, 5]
        )


def test_read_errors(tmp_path, series, enhanced):
    path, frame_numbers = enhanced
    out = write_dicom_seg(_mask(), [path], LABELS, tmp_path / "seg.dcm", frame_numbers=frame_numbers)
    with pytest.raises(ValueError, match="has 5 frames: pass frame_numbers"):
        read_dicom_seg(out, [path], LABELS)
    with pytest.raises(ValueError, match="single multi-frame source file, got 5 source_files"):
        read_dicom_seg(out, series, LABELS, frame_numbers=frame_numbers)
    with pytest.raises(ValueError, match=r"distinct, got \[2\] more than once"):
        read_dicom_seg(out, [path], LABELS, frame_numbers=[2, 2, 1])


def test_multiframe_without_functional_groups_is_refused(tmp_path, series):
    path = to_enhanced(series, tmp_path / "ct.dcm", SHUFFLED)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    with pytest.raises(
        ValueError, match=r"ct\.dcm: needs a PerFrameFunctionalGroupsSequence with one item per frame"
    ):
        write_dicom_seg(
            np.zeros(SHAPE, np.uint8), [path], LABELS, tmp_path / "seg.dcm", frame_numbers=[1, 2, 3, 4, 5]
        )
