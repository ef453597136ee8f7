"""RTSTRUCT: a valid RT Structure Set IOD that references every source image, copies patient and study, and
whose contours lie on their slices (oblique too) and rasterise back to the mask, holes included."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage
from skimage.draw import polygon

from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.outputs.preview import label_colour
from pipeline.outputs.rtstruct import write_rtstruct
from pipeline.outputs.contour_fill import fill_even_odd
from pipeline.outputs.rtstruct_read import read_rtstruct, rtstruct_to_mask
from tests.dicom_checks import dice, fill_each_contour
from transforms.dicom.series import load_dicom

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _case(tiny_dataset, case: str):
    """(label map, dicom_files, affine_ras, label names) of a synthetic patient's DICOM series."""
    _, affine, meta = load_dicom(tiny_dataset.parent / "patients" / case / "ct_dicom")
    label = nib.load(tiny_dataset.parent / "patients" / case / "label.nii.gz")
    np.testing.assert_allclose(label.affine, affine, atol=1e-4)
    names = {int(k): v for k, v in json.loads(tiny_dataset.read_text())["labels"].items() if int(k) > 0}
    return np.asarray(label.dataobj).astype(np.uint8), meta["dicom_files"], affine, names


def _headers(files):
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def test_iod_references_and_patient_study(tiny_dataset, tmp_path, caplog):
    mask, files, _, names = _case(tiny_dataset, "case_000")
    assert set(np.unique(mask)) == {0, *names}
    labels = {**names, 7: "absent organ"}
    src = _headers(files)
    with caplog.at_level(logging.DEBUG):
        out = write_rtstruct(
            mask, files, labels, tmp_path / "rs.dcm", structure_set_label="auto", algorithm_name="net"
        )
    assert [p.name for p in tmp_path.iterdir()] == ["rs.dcm"]
    assert not any(str(src[0].PatientName) in r.getMessage() for r in caplog.records)

    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "RTSTRUCT" and ds.Manufacturer == "clinseg" and "SoftwareVersions" in ds
    assert ds.StructureSetLabel == "auto" and ds.StructureSetDate and ds.StructureSetTime
    assert ds.SeriesInstanceUID != src[0].SeriesInstanceUID
    assert ds.SOPInstanceUID not in {h.SOPInstanceUID for h in src}
    for key in (
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
    ):
        assert key in ds and ds[key].value == src[0][key].value, key

    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == src[0].StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == src[0].SeriesInstanceUID
    listed = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence]
    assert listed == [(h.SOPClassUID, h.SOPInstanceUID) for h in src]

    ids = sorted(labels)
    assert [
        (r.ROINumber, r.ROIName, r.ROIGenerationAlgorithm, r.ROIGenerationDescription)
        for r in ds.StructureSetROISequence
    ] == [(i, labels[i], "AUTOMATIC", "net") for i in ids]
    assert {r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence} == {
        src[0].FrameOfReferenceUID
    }
    assert [
        (o.ObservationNumber, o.ReferencedROINumber, o.RTROIInterpretedType, o.ROIInterpreter)
        for o in ds.RTROIObservationsSequence
    ] == [(i, i, "ORGAN", "") for i in ids]
    assert [r.ReferencedROINumber for r in ds.ROIContourSequence] == ids
    for roi in ds.ROIContourSequence:
        assert list(roi.ROIDisplayColor) == [
            round(c * 255) for c in label_colour(roi.ReferencedROINumber, ids)
        ]
    assert "ContourSequence" not in ds.ROIContourSequence[-1]  # the absent organ keeps its ROI, no contours

    uid_slice = {h.SOPInstanceUID: k for k, h in enumerate(src)}
    for roi in ds.ROIContourSequence[:-1]:
        lid = roi.ReferencedROINumber
        slices = set()
        for item in roi.ContourSequence:
            assert item.ContourGeometricType == "CLOSED_PLANAR"
            assert len(item.ContourData) == 3 * item.NumberOfContourPoints
            assert all(len(v.original_string) <= 16 for v in item.ContourData)
            (image,) = item.ContourImageSequence
            slices.add(uid_slice[image.ReferencedSOPInstanceUID])
        assert slices == set(np.flatnonzero(np.any(mask == lid, axis=(0, 1))).tolist())

    back = rtstruct_to_mask(out, files)
    np.testing.assert_array_equal(back, mask)
    contours = read_rtstruct(out)
    assert list(contours) == [labels[i] for i in ids] and contours["absent organ"] == []
    assert sum(len(c) for c in contours.values()) == sum(
        len(r.get("ContourSequence", [])) for r in ds.ROIContourSequence
    )


@pytest.mark.parametrize("case", ["case_002", "case_005"])
def test_oblique_contours_lie_on_their_slices(tiny_dataset, tmp_path, case):
    mask, files, affine, names = _case(tiny_dataset, case)
    assert np.max(np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3])))) > 0.05  # really oblique
    out = write_rtstruct(mask, files, names, tmp_path / "rs.dcm")
    src = _headers(files)
    uid_slice = {h.SOPInstanceUID: k for k, h in enumerate(src)}
    vox_from_lps = np.linalg.inv(_LPS @ affine)
    for roi in pydicom.dcmread(out).ROIContourSequence:
        for item in roi.ContourSequence:
            k = uid_slice[item.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.asarray(src[k].ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            xyz = np.asarray(item.ContourData, float).reshape(-1, 3)
            dist = (xyz - np.asarray(src[k].ImagePositionPatient, float)) @ normal
            assert np.max(np.abs(dist)) < 1e-3
            ijk = xyz @ vox_from_lps[:3, :3].T + vox_from_lps[:3, 3]  # through the loader's affine
            np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)
    np.testing.assert_array_equal(rtstruct_to_mask(out, files), mask)


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory):
    a, b = np.deg2rad(25), np.deg2rad(-15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    files = write_dicom_series(np.zeros((33, 34, 5)), affine, tmp_path_factory.mktemp("ct"), uid_seed="rt")
    return files, affine


def test_box_is_exact_and_ring_keeps_its_hole(oblique_series, tmp_path):
    files, affine = oblique_series
    mask = np.zeros((33, 34, 5), np.uint8)
    mask[5:20, 3:10, 1:4] = 2  # box
    ii, jj = np.mgrid[:33, :34]
    r = np.hypot(ii - 16, jj - 17)
    mask[:, :, 4][(r > 5) & (r < 12)] = 3  # ring
    mask[15:18, 16:19, 4] = 4  # island inside the ring's hole
    labels = {2: "box", 3: "ring", 4: "island"}
    tensor = MetaTensor(torch.from_numpy(mask)[None])
    out = write_rtstruct(tensor, files, labels, tmp_path / "rs.dcm", min_component_mm3=0)
    np.testing.assert_array_equal(rtstruct_to_mask(out, files), mask)
    for lid, filled in zip(labels, fill_each_contour(out, files).values(), strict=True):
        np.testing.assert_array_equal(filled, mask == lid)

    contours = read_rtstruct(out)
    (ring,) = contours["ring"]  # one keyhole contour: outer boundary, cut, hole, back along the cut
    vox_from_lps = np.linalg.inv(_LPS @ affine)
    for k, box in zip((1, 2, 3), contours["box"], strict=True):
        ijk = box @ vox_from_lps[:3, :3].T + vox_from_lps[:3, 3]
        assert len(box) == 8  # straight runs dropped: four sides, four cut corners
        np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)
        np.testing.assert_allclose(ijk[:, :2].min(axis=0), [4.5, 2.5], atol=1e-3)
        np.testing.assert_allclose(ijk[:, :2].max(axis=0), [19.5, 9.5], atol=1e-3)
    ijk = ring @ vox_from_lps[:3, :3].T + vox_from_lps[:3, 3]
    radius = np.hypot(ijk[:, 0] - 16, ijk[:, 1] - 17)
    assert radius.min() < 6.5 and radius.max() > 11  # passes along the hole and the outer boundary
    (island,) = contours["island"]
    assert len(island) == 8

    by_name = rtstruct_to_mask(out, files, {20: "box", 30: "ring"})  # island not listed: skipped
    np.testing.assert_array_equal(by_name, np.select([mask == 2, mask == 3], [20, 30], 0))


def _rings(shape, centre, radii) -> np.ndarray:
    """Concentric annuli ``radii[0] > r > radii[1]``, ``radii[2] > r > radii[3]``, ... (odd count: a disc)."""
    ii, jj = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(ii - centre[0], jj - centre[1])
    edges = [*radii, -1.0] if len(radii) % 2 else list(radii)
    return np.any([(r < hi) & (r > lo) for hi, lo in zip(edges[::2], edges[1::2])], axis=0)


def _shapes(name: str) -> np.ndarray:
    """``(33, 34, 5)`` label maps with holes, nested islands and several components."""
    mask = np.zeros((33, 34, 5), np.uint8)
    if name == "nested":  # ring, ring inside its hole, disc inside that: three levels of islands
        mask[:, :, 2][_rings((33, 34), (16, 17), (15, 12, 9, 6, 3))] = 1
        mask[:, :, 3][_rings((33, 34), (10.3, 20.6), (9.5, 6.2, 4.1))] = 1
    elif name == "holes_on_one_row":  # holes side by side: a cut runs from one hole to the next
        mask[2:31, 2:32, 1:4] = 1
        for c0 in (5, 12, 19, 26):
            mask[10:20, c0 : c0 + 4, 1:4] = 0
        mask[6:9, 6:28, 2] = 0  # and a hole above them, touching no other
        mask[14:16, 13:15, 3] = 2  # another label's island in a hole
    elif name == "border":  # touches the image border, hole included
        mask[:, :, 0] = 1
        mask[10:20, 10:20, 0] = 0
        mask[0:12, 0:6, 4] = 2
    else:  # random blobs: many components, holes, islands in holes, diagonal contacts
        rng = np.random.default_rng(int(name[-1]))
        noise = ndimage.gaussian_filter(rng.normal(size=(33, 34, 5)), (1.2, 1.2, 0))
        mask[noise > 0.05] = 1
        mask[noise < -0.12] = 2
    return mask


@pytest.mark.parametrize("name", ["nested", "holes_on_one_row", "border", "random_0", "random_1"])
def test_holes_and_islands_read_back_both_ways(oblique_series, tmp_path, name):
    """Even-odd across all contours and each contour filled on its own (union) both give every structure."""
    files, _ = oblique_series
    mask = _shapes(name)
    labels = {1: "organ", 2: "lesion"}
    out = write_rtstruct(mask, files, labels, tmp_path / "rs.dcm", min_component_mm3=0)
    even_odd = rtstruct_to_mask(out, files)
    union = fill_each_contour(out, files)
    for lid, roi in labels.items():
        assert dice(even_odd == lid, mask == lid) >= 0.99, (name, roi)
        assert dice(union[roi], mask == lid) >= 0.99, (name, roi)
    np.testing.assert_array_equal(even_odd, mask)  # exact, in fact
    for lid, roi in labels.items():
        np.testing.assert_array_equal(union[roi], mask == lid)
    components = sum(ndimage.label(mask[:, :, k] == lid)[1] for lid in labels for k in range(5))
    assert sum(len(c) for c in read_rtstruct(out).values()) == components  # one contour per component


@pytest.mark.parametrize("name", ["nested", "holes_on_one_row", "random_0"])
def test_contours_cut_into_bands_still_read_back_both_ways(oblique_series, tmp_path, monkeypatch, name):
    monkeypatch.setattr("pipeline.outputs.rtstruct._MAX_DS_BYTES", 600)  # about 20 points a contour: many cuts
    files, _ = oblique_series
    mask = _shapes(name)
    out = write_rtstruct(mask, files, {1: "organ", 2: "lesion"}, tmp_path / "rs.dcm", min_component_mm3=0)
    for roi in pydicom.dcmread(out).ROIContourSequence:
        for item in roi.get("ContourSequence", []):
            assert len("\\".join(v.original_string for v in item.ContourData)) <= 600
    np.testing.assert_array_equal(rtstruct_to_mask(out, files), mask)
    union = fill_each_contour(out, files)
    np.testing.assert_array_equal(union["organ"], mask == 1)
    np.testing.assert_array_equal(union["lesion"], mask == 2)


def test_contours_without_image_references_go_to_the_nearest_slice(oblique_series, tmp_path):
    files, _ = oblique_series
    mask = np.zeros((33, 34, 5), np.uint8)
    mask[3:30:2, 4:30:3, :] = 1
    mask[10:20, 10:20, 2] = 1
    out = write_rtstruct(mask, files, {1: "spots"}, tmp_path / "rs.dcm", min_component_mm3=0)
    ds = pydicom.dcmread(out)
    for item in ds.ROIContourSequence[0].ContourSequence:
        del item.ContourImageSequence
    ds.save_as(tmp_path / "bare.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(rtstruct_to_mask(tmp_path / "bare.dcm", files), mask)


def test_huge_contour_is_cut_into_bands_that_fit_a_ds_element(tmp_path, caplog):
    affine = np.diag([0.7317, 0.3719, 1.0, 1.0])
    affine[:3, 3] = [-123.4567, 234.5678, 17.3147]
    files = write_dicom_series(np.zeros((64, 1400, 1)), affine, tmp_path / "ct", uid_seed="h")
    mask = np.zeros((64, 1400, 1), np.uint8)
    for j in range(1400):
        mask[10 + j % 2 : 50 - j % 2, j, 0] = 1  # both sides zig-zag: 2800 corners, ~74 kB of ContourData
    mask[20:40, 300:1100, 0] = 0  # and a hole: one keyhole polygon would be longer still
    with caplog.at_level(logging.WARNING):
        out = write_rtstruct(mask, files, {1: "comb"}, tmp_path / "rs.dcm")
    assert not caplog.records
    items = pydicom.dcmread(out).ROIContourSequence[0].ContourSequence
    assert len(items) > 1
    for item in items:
        assert item["ContourData"].VR == "DS"
        assert len("\\".join(v.original_string for v in item.ContourData)) <= 0xFFFE
    np.testing.assert_array_equal(rtstruct_to_mask(out, files), mask)
    np.testing.assert_array_equal(fill_each_contour(out, files)["comb"], mask == 1)


@pytest.mark.parametrize("seed", range(4))
def test_scanline_fill_matches_skimage_polygon_xor(seed):
    """The rasteriser equals XOR-ed ``skimage.draw.polygon`` fills on random nested star polygons."""
    rng = np.random.default_rng(seed)
    shape = (37, 41)
    polygons, expected = [], np.zeros(shape, bool)
    for radius in (18.0, 11.0, 5.0):  # outer boundary, hole, island; crossing the image border too
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 40)))
        r = radius * rng.uniform(0.6, 1.0, angles.size)
        centre = rng.uniform([14, 16], [22, 24]) if radius == 18 else polygons[0].mean(axis=0)
        poly = centre + np.stack([r * np.sin(angles), r * np.cos(angles)], axis=1)
        polygons.append(poly)
        fill = np.zeros(shape, bool)
        fill[polygon(poly[:, 0], poly[:, 1], shape=shape)] = True
        expected ^= fill
        np.testing.assert_array_equal(fill_even_odd(polygons, shape), expected)
    assert not fill_even_odd([np.array([[-9.0, 1.0], [-5.0, 3.0], [-7.0, 8.0]])], shape).any()


@pytest.mark.realdata
def test_real_ct_round_trip(shared_data, tmp_path, caplog):
    _, _, meta = load_dicom(shared_data / "dcmqi" / "ct_3slice")
    files = meta["dicom_files"]
    mask = np.asarray(nib.load(shared_data / "dcmqi" / "liver_spine_seg.nii.gz").dataobj).astype(np.uint8)
    patient = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientName)
    with caplog.at_level(logging.DEBUG):
        out = write_rtstruct(mask, files, {1: "Liver", 2: "Spine"}, tmp_path / "rs.dcm", min_component_mm3=0)
    assert patient and not any(patient in r.getMessage() for r in caplog.records)
    assert str(pydicom.dcmread(out).PatientName) == patient
    np.testing.assert_array_equal(rtstruct_to_mask(out, files), mask)


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    return write_dicom_series(np.zeros((9, 8, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), folder, uid_seed="s")


@pytest.fixture(scope="module")
def multiframe(tmp_path_factory, small_series):
    ds = pydicom.dcmread(small_series[0])
    ds.NumberOfFrames = 2
    path = tmp_path_factory.mktemp("mf") / "mf.dcm"
    ds.save_as(path)
    return path


_OK = np.zeros((9, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "mask, order, labels, kwargs, match",
    [
        (np.zeros((9, 8, 2), np.uint8), None, {1: "a"}, {}, "one file per slice"),
        (np.zeros((8, 9, 3), np.uint8), None, {1: "a"}, {}, "columns x rows"),
        (np.zeros((9, 8), np.uint8), None, {1: "a"}, {}, r"\(X, Y, Z\)"),
        (_OK, [2, 1, 0], {1: "a"}, {}, "sorted ascending"),
        (np.full((9, 8, 3), 3, np.uint8), None, {1: "a"}, {}, r"labels \[3\] that are not declared"),
        (_OK, None, {}, {}, "at least one foreground label"),
        (_OK, None, {0: "background"}, {}, "ids 1..255"),
        (_OK, None, {256: "big"}, {}, "ids 1..255"),
        (_OK, None, {1: " "}, {}, "non-empty name"),
        (_OK, None, {1: "a", 2: "a"}, {}, "distinct names"),
        (_OK, None, {1: "a"}, {"structure_set_label": "x" * 17}, "structure_set_label must be 1..16"),
        (_OK, "multiframe", {1: "a"}, {}, "multi-frame image"),
        (_OK, [], {1: "a"}, {}, "got none"),
    ],
)
def test_input_errors(request, tmp_path, small_series, mask, order, labels, kwargs, match):
    if order == "multiframe":
        files = [request.getfixturevalue("multiframe"), *small_series[1:]]
    else:
        files = small_series if order is None else [small_series[k] for k in order]
    with pytest.raises(ValueError, match=match):
        write_rtstruct(mask, files, labels, tmp_path / "rs.dcm", **kwargs)
    assert not list(tmp_path.iterdir())


def test_sources_from_two_frames_of_reference_are_refused(tmp_path, small_series):
    other = write_dicom_series(
        np.zeros((9, 8, 3)), np.diag([1.0, 1.0, 2.0, 1.0]), tmp_path / "o", uid_seed="o"
    )
    with pytest.raises(ValueError, match="one non-empty FrameOfReferenceUID"):
        write_rtstruct(_OK, [*small_series[:2], other[2]], {1: "a"}, tmp_path / "rs.dcm")


def test_read_rejects_other_objects(small_series):
    with pytest.raises(ValueError, match="not an RT Structure Set"):
        read_rtstruct(small_series[0])
    with pytest.raises(ValueError, match="not an RT Structure Set"):
        rtstruct_to_mask(small_series[0], small_series)


@pytest.mark.realdata
def test_planning_ct_structures_read_back_both_ways(shared_data, tmp_path):
    """A treatment-planning system's own ROIs as a label map (the body has lungs, cord and tumour as holes)
    come back from our RTSTRUCT both ways."""
    folder = shared_data / "nsclc" / "LUNG1-001"
    _, _, meta = load_dicom(folder)
    files = meta["dicom_files"]
    (planned,) = [
        f for f in folder.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT"
    ]
    labels = {1: "Patient", 2: "Lung L", 3: "Lung R", 4: "Spinal cord", 5: "GTV-1"}
    mask = rtstruct_to_mask(planned, files, labels)
    tumour = np.flatnonzero(np.any(mask == 5, axis=(0, 1)))
    keep = slice(int(tumour.min()), int(tumour.max()) + 1)  # the tumour's slices: every structure is there
    mask, files = mask[:, :, keep], files[keep]
    assert len(files) >= 5 and set(np.unique(mask)) == {0, *labels}
    body = mask[:, :, 0] == 1
    assert ndimage.label(ndimage.binary_fill_holes(body) & ~body)[1] >= 2  # lungs and more: holes in the body
    out = write_rtstruct(mask, files, labels, tmp_path / "rs.dcm", min_component_mm3=0)
    even_odd = rtstruct_to_mask(out, files, labels)
    union = fill_each_contour(out, files)
    for lid, roi in labels.items():
        assert dice(even_odd == lid, mask == lid) >= 0.99, roi
        assert dice(union[roi], mask == lid) >= 0.99, roi
    np.testing.assert_array_equal(even_odd, mask)
