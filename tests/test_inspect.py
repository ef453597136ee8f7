"""transforms.io.inspect: inspection rows, the text table and NIfTI conversion."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.synthetic.dicom_series import write_dicom_series
from transforms.io.inspect import convert_to_nifti, format_inspection, inspect_path
from transforms.io.scan import ScanLoadError

AFFINE = np.diag([0.7, 0.8, 2.0, 1.0])


@pytest.fixture()
def folder(tmp_path):
    vol = np.random.default_rng(0).integers(-1000, 400, (9, 8, 6)).astype(np.int16)
    write_dicom_series(vol, AFFINE, tmp_path / "good", series_description="good", series_uid="1.2.3.1")
    paths = write_dicom_series(
        vol, AFFINE, tmp_path / "gappy", series_description="gappy", series_uid="1.2.3.2"
    )
    paths[2].unlink()
    return tmp_path, vol


def test_rows_describe_series_and_problems(folder):
    root, vol = folder
    rows = {r["path"]: r for r in inspect_path(root)}
    good, gappy = rows["good"], rows["gappy"]
    assert good["kind"] == "dicom" and good["series_uid"] == "1.2.3.1" and good["modality"] == "CT"
    assert good["size"] == (9, 8, 6) and good["slices"] == 6 and good["spacing"] == (0.7, 0.8, 2.0)
    assert good["orientation"] == "RAS" and good["range"] == (float(vol.min()), float(vol.max()))
    assert good["problems"] == []
    assert gappy["slices"] == 5 and "missing slices" in gappy["problems"][0]
    table = format_inspection(list(rows.values()))
    assert "missing slices" in table and "9x8x6" in table and table.splitlines()[0].startswith("kind")


def test_nifti_row_and_orientation(tmp_path):
    nib.save(
        nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "x.nii.gz"
    )
    (row,) = inspect_path(tmp_path / "x.nii.gz")
    assert row["kind"] == "nifti" and row["orientation"] == "LPS" and row["size"] == (3, 4, 5)
    with pytest.raises(ScanLoadError, match="no such file"):
        inspect_path(tmp_path / "missing")
    assert format_inspection([]).startswith("no images found")


def test_convert_writes_same_geometry_atomically(folder, tmp_path):
    root, vol = folder
    out = convert_to_nifti(root, tmp_path / "out" / "ct.nii.gz", series_uid="1.2.3.1")
    img = nib.load(out)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ct.nii.gz"]
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        convert_to_nifti(root, tmp_path / "ct.mha")


def test_single_dicom_file_is_a_one_slice_volume(folder, tmp_path):
    root, vol = folder
    path = min((root / "good").iterdir())
    assert pydicom.dcmread(path).Modality == "CT"
    (row,) = inspect_path(path)
    assert row["problems"] == [] and row["size"] == (9, 8, 1) and row["spacing"] == (0.7, 0.8, 2.0)
    out = nib.load(convert_to_nifti(path, tmp_path / "one.nii.gz"))
    assert out.shape == (9, 8, 1)
    np.testing.assert_array_equal(np.asarray(out.dataobj), vol[:, :, :1])
    np.testing.assert_allclose(out.affine, AFFINE, atol=1e-5)


def test_symlinked_case_folders_are_followed_like_import(tmp_path):
    """A folder of symbolic links to case folders (as `clinseg import` and `predict` read) is inspected, and a
    link cycle ends."""
    vol = np.zeros((9, 8, 6), np.int16)
    write_dicom_series(vol, AFFINE, tmp_path / "store" / "p1", series_uid="1.2.3.7")
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "p1").symlink_to(tmp_path / "store" / "p1", target_is_directory=True)
    (tmp_path / "store" / "p1" / "loop").symlink_to(tmp_path / "cases", target_is_directory=True)
    rows = inspect_path(tmp_path / "cases")
    assert [(r["series_uid"], r["slices"], r["problems"]) for r in rows] == [("1.2.3.7", 6, [])]


def test_mixed_image_types_are_named_and_selectable(tmp_path):
    """Magnitude and phase images of one SWI series under one SeriesInstanceUID: refused naming the ImageType
    values (not only "duplicate slice positions"), and the magnitude images load with image_type='M'."""
    from transforms.dicom.series import load_dicom
    from transforms.dicom.discovery import SeriesRule

    vol = np.random.default_rng(1).integers(0, 400, (9, 8, 4)).astype(np.int16)
    mag = write_dicom_series(vol, AFFINE, tmp_path / "swi" / "m", series_uid="1.2.3.9", uid_seed="m")
    phase = write_dicom_series(vol, AFFINE, tmp_path / "swi" / "p", series_uid="1.2.3.9", uid_seed="p")
    for paths, kind in ((mag, "M"), (phase, "P")):
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.ImageType = ["ORIGINAL", "PRIMARY", kind, "ND"]
            ds.save_as(p)
    (row,) = inspect_path(tmp_path / "swi")
    assert "ImageType" in row["problems"][0] and "ORIGINAL\\PRIMARY\\M\\ND (4 images)" in row["problems"][0]
    assert "image_type': 'M'" in row["problems"][0]
    with pytest.raises(ScanLoadError, match=r"2 ImageType values share slice positions"):
        load_dicom(tmp_path / "swi")
    array, _, meta = load_dicom(tmp_path / "swi", rule=SeriesRule(image_type="m"))
    assert array.shape == (9, 8, 4) and all("/m/" in f for f in meta["dicom_files"])
    with pytest.raises(ScanLoadError, match="has ImageType 'X'"):
        load_dicom(tmp_path / "swi", rule=SeriesRule(image_type="X"))
