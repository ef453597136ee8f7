"""RTSTRUCT to label map: duplicated contours count once, nested contours are holes, overlapping ones unite;
on the real planning CT every slice where a structure's contour has area is labelled."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from skimage.draw import polygon

from pipeline.datasets.importer import import_dataset
from pipeline.outputs.rtstruct import read_source_slices
from pipeline.outputs.rtstruct_read import rasterise_rois, rtstruct_to_mask
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.dicom_builders import write_contours
from transforms.dicom.series import load_dicom

_SHAPE = (40, 36, 6)  # (X, Y, Z): 36 rows x 40 columns per slice


def _square(r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


def _filled(*squares: np.ndarray) -> np.ndarray:
    """``(X, Y)`` mask of the pixel centres inside the union of the squares."""
    out = np.zeros(_SHAPE[1::-1], bool)  # (rows, columns)
    for sq in squares:
        out[polygon(sq[:, 0], sq[:, 1], shape=out.shape)] = True
    return out.T


OUTER, HOLE, ISLAND = _square(4.5, 4.5, 30.5, 34.5), _square(10.5, 10.5, 24.5, 28.5), _square(15.5, 15.5, 19.5, 20.5)
NEAR = OUTER + np.array([0.05, -0.08])  # a copy a tenth of a pixel off: near-identical


@pytest.fixture()
def duplicated(tmp_path):
    files = write_dicom_series(np.zeros(_SHAPE, np.int16), np.diag([0.8, 0.8, 2.5, 1.0]), tmp_path / "ct", uid_seed="d")
    contours = {
        "organ": [
            (0, OUTER), (0, OUTER),  # 2 copies
            (1, OUTER), (1, OUTER), (1, OUTER),  # 3 copies
            (2, OUTER), (2, HOLE),  # a true hole
            (3, OUTER), (3, HOLE), (3, OUTER), (3, HOLE), (3, ISLAND),  # both listed twice, an island in the hole
            (4, OUTER), (4, NEAR), (4, HOLE),  # a near-identical copy
            (5, _square(4.5, 4.5, 20.5, 20.5)), (5, _square(12.5, 12.5, 30.5, 34.5)),  # overlapping: united
        ]
    }
    return files, write_contours(files, contours, tmp_path / "rs.dcm")


def test_duplicates_count_once_holes_stay_holes(duplicated):
    files, path = duplicated
    ring = _filled(OUTER) & ~_filled(HOLE)
    expected = np.stack(
        [
            _filled(OUTER),
            _filled(OUTER),
            ring,
            ring | _filled(ISLAND),
            ring,
            _filled(_square(4.5, 4.5, 20.5, 20.5), _square(12.5, 12.5, 30.5, 34.5)),
        ],
        axis=-1,
    )
    raster = rasterise_rois(path, files)["organ"]
    np.testing.assert_array_equal(raster.mask, expected)
    assert raster.duplicates == {0: 1, 1: 2, 3: 2, 4: 1} and raster.contours == 17 and raster.unresolved == 0
    np.testing.assert_array_equal(rtstruct_to_mask(path, files, {3: "organ"}), expected * 3)


def test_import_report_names_merged_duplicates(duplicated, tmp_path):
    files, path = duplicated
    case = tmp_path / "src" / "p0"
    case.mkdir(parents=True)
    for f in [*files, path]:
        (case / f.name).symlink_to(f)
    report = import_dataset(tmp_path / "src", tmp_path / "out", structures="1=organ", test_fraction=0, folds=1)
    entry = report["cases"]["p0"]
    assert entry["duplicate_contours_merged"] == {"organ": {"0": 1, "1": 2, "3": 2, "4": 1}}
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    assert entry["volumes_ml"]["organ"]["structure"] == pytest.approx(
        rasterise_rois(path, files)["organ"].mask.sum() * voxel_ml, abs=0.01
    )


def _area(rc: np.ndarray) -> float:
    """Shoelace area of a closed ``(N, 2)`` polygon, in pixels."""
    r, c = rc[:, 0], rc[:, 1]
    return 0.5 * abs(float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))))


@pytest.mark.realdata
def test_planning_ct_every_contoured_slice_is_labelled(shared_data):
    """LUNG1-001: each ROI's slices whose contours enclose area (>= 4 pixels) are non-empty in its mask,
    '1,SUV_primair' (every contour written twice) included: the even-odd rule across contours erased it."""
    folder = shared_data / "nsclc" / "LUNG1-001"
    files = load_dicom(folder)[2]["dicom_files"]
    (path,) = [f for f in folder.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT"]
    slices = read_source_slices(files)
    z = np.array([s.normal @ s.ipp for s in slices])
    rasters = rasterise_rois(path, files)
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    checked = set()
    for roi in ds.ROIContourSequence:
        name = names[int(roi.ReferencedROINumber)]
        for item in roi.get("ContourSequence", []):
            if item.ContourGeometricType != "CLOSED_PLANAR":
                continue
            points = np.asarray(item.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(z - points[:, 2].mean())))
            if _area(slices[k].to_pixel(points)) >= 4:
                assert rasters[name].mask[:, :, k].any(), (name, k)
                checked.add(name)
    assert {"GTV-1", "Lung L", "Lung R", "Spinal cord", "Patient", "1,SUV_primair"} <= checked
    assert rasters["1,SUV_primair"].duplicates and not rasters["Lung L"].duplicates


def test_boundary_rule_adds_the_contour_line_and_keeps_a_holes_line():
    from pipeline.outputs.contour_fill import fill_structure_slice

    square = np.array([[2.0, 2.0], [2.0, 7.0], [7.0, 7.0], [7.0, 2.0]])  # (row, column), pixel centres on it
    hole = np.array([[4.0, 4.0], [4.0, 5.0], [5.0, 5.0], [5.0, 4.0]])
    centre, _ = fill_structure_slice([square + 0.5], (10, 10))
    boundary, _ = fill_structure_slice([square + 0.5], (10, 10), "boundary")
    assert centre.sum() == 25 and boundary.sum() == 49 and (boundary & centre).sum() == 25  # one ring: 7 x 7
    ring, _ = fill_structure_slice([square, hole], (10, 10), "boundary")
    assert ring[4:6, 4:6].all()  # the hole's line is structure under the boundary rule: nothing removed
    ring_centre, _ = fill_structure_slice([square + 0.1, hole + 0.1], (10, 10))
    assert not ring_centre[5, 5]
    with pytest.raises(ValueError, match="contour rule 'inside' is not one of centre, boundary"):
        fill_structure_slice([square], (10, 10), "inside")
