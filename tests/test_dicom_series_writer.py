"""pipeline.synthetic.dicom_series.write_dicom_series: geometry, stored values, UIDs and argument checks."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from pipeline.synthetic.dicom_series import lps_geometry_from_affine, write_dicom_series


def _volume(shape=(7, 6, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-10.0, 20.5, 33.0]
    return affine


AFFINES = {
    "identity": np.eye(4),
    "ras_spaced": np.diag([0.7, 0.75, 2.0, 1.0])
    + np.array([[0, 0, 0, 5.0], [0, 0, 0, -3.0], [0, 0, 0, 12.0], [0, 0, 0, 0]]),
    "lps_like": np.diag([-1.0, -1.0, 1.5, 1.0]),
    "oblique": _oblique_affine(),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_slices_hold_transposed_planes_and_geometry(tmp_path, name):
    affine = AFFINES[name]
    vol = _volume()
    paths = write_dicom_series(vol, affine, tmp_path, uid_seed="s")
    assert [p.name for p in paths] == [f"slice_{k:04d}.dcm" for k in range(5)]
    lps = np.diag([-1.0, -1.0, 1, 1]) @ affine
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage
        assert (ds.Rows, ds.Columns) == (6, 7)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, vol[:, :, k].T)
        assert ds.pixel_array.dtype == np.int16
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], lps[:3, 3] + k * lps[:3, 2], atol=1e-6
        )
        row, col = (
            np.array(ds.ImageOrientationPatient[:3], float),
            np.array(ds.ImageOrientationPatient[3:], float),
        )
        np.testing.assert_allclose(row * float(ds.PixelSpacing[1]), lps[:3, 0], atol=1e-6)
        np.testing.assert_allclose(col * float(ds.PixelSpacing[0]), lps[:3, 1], atol=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(np.linalg.norm(lps[:3, 2]))
        assert ds.InstanceNumber == k + 1
        assert "PatientBirthDate" not in ds or ds.PatientBirthDate == ""


def test_uids_are_valid_and_deterministic_from_seed(tmp_path):
    a = [
        pydicom.dcmread(p) for p in write_dicom_series(_volume(), np.eye(4), tmp_path / "a", uid_seed="case1")
    ]
    b = [
        pydicom.dcmread(p) for p in write_dicom_series(_volume(), np.eye(4), tmp_path / "b", uid_seed="case1")
    ]
    c = [
        pydicom.dcmread(p) for p in write_dicom_series(_volume(), np.eye(4), tmp_path / "c", uid_seed="case2")
    ]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert [getattr(d, key) for d in a] == [getattr(d, key) for d in b]
        assert getattr(a[0], key) != getattr(c[0], key)
        assert all(getattr(d, key).is_valid for d in a)
    assert len({d.SOPInstanceUID for d in a}) == len(a)
    assert len({d.SeriesInstanceUID for d in a}) == 1


def test_explicit_uids_names_and_mr(tmp_path):
    names = ["zz", "a1", "IMG0003"]
    paths = write_dicom_series(
        np.zeros((4, 3, 3), np.int16),
        np.eye(4),
        tmp_path,
        modality="MR",
        series_uid="1.2.3.4",
        series_description="t1",
        file_names=names,
        patient_pseudonym="CASE_7",
    )
    assert [p.name for p in paths] == names
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == MRImageStorage and ds.SeriesInstanceUID == "1.2.3.4"
    assert str(ds.PatientName) == "CASE_7" and ds.SeriesDescription == "t1"
    assert float(ds.RescaleIntercept) == 0.0


@pytest.mark.parametrize(
    "affine, match",
    [
        (np.diag([1.0, 1.0, -1.0, 1.0]), "det"),
        (np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "orthogonal"),
        (np.eye(3), "4x4"),
    ],
)
def test_rejects_bad_affines(tmp_path, affine, match):
    with pytest.raises(ValueError, match=match):
        write_dicom_series(_volume(), affine, tmp_path)


@pytest.mark.parametrize(
    "vol, kwargs, match",
    [
        (np.zeros((3, 3)), {}, r"\(X, Y, Z\)"),
        (np.full((3, 3, 2), 0.5), {}, "integer-valued"),
        (np.full((3, 3, 2), np.nan), {}, "NaN"),
        (np.full((3, 3, 2), 40000), {}, "int16"),
        (np.zeros((3, 3, 2)), {"modality": "PET"}, "modality"),
        (np.zeros((3, 3, 2)), {"file_names": ["a"]}, "2 distinct names"),
        (np.zeros((3, 3, 2)), {"file_names": ["a", "sub/b"]}, "without folders"),
    ],
)
def test_rejects_bad_volumes_and_arguments(tmp_path, vol, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_dicom_series(vol, np.eye(4), tmp_path, **kwargs)


def test_geometry_helper_splits_spacing():
    geo = lps_geometry_from_affine(np.diag([0.5, 0.6, 3.0, 1.0]))
    np.testing.assert_allclose(geo["pixel_spacing"], [0.6, 0.5])
    np.testing.assert_allclose(geo["row_dir"], [-1, 0, 0])
    np.testing.assert_allclose(geo["col_dir"], [0, -1, 0])
    np.testing.assert_allclose(geo["slice_step"], [0, 0, 3.0])
