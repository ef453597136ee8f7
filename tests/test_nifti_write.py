"""The one NIfTI writer: geometry, dtype, scaling and header as asked, deterministic bytes, clear refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from transforms.io.nifti_write import write_nifti

OBLIQUE = np.array([[0.8, 0.1, 0.0, -10.0], [-0.1, 0.9, 0.0, 5.0], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_keeps_values_dtype_and_affine(tmp_path, name, dtype):
    data = (np.arange(33 * 34 * 5) % 200).reshape(33, 34, 5).astype(dtype)
    out = write_nifti(data, OBLIQUE, tmp_path / name, description="clinseg test")
    img = nib.load(out)
    assert img.get_data_dtype() == dtype and np.array_equal(np.asanyarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, OBLIQUE, atol=1e-6)
    assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (1, 1)
    assert img.header.get_xyzt_units()[0] == "mm" and img.header["descrip"].tobytes().startswith(b"clinseg test")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_slope_stores_quantised_values_read_back_as_floats(tmp_path):
    probs = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    quantised = np.round(probs * 255).astype(np.uint8)
    img = nib.load(write_nifti(quantised, np.eye(4), tmp_path / "p.nii.gz", slope=1 / 255))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.get_fdata(), probs, atol=0.002)


def test_a_given_header_keeps_its_dtype_and_codes(tmp_path):
    source = nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), OBLIQUE)
    source.set_sform(OBLIQUE, code=2)
    channel = np.ones((4, 5, 6), np.int16)
    img = nib.load(write_nifti(channel, OBLIQUE, tmp_path / "c.nii.gz", header=source.header))
    assert img.shape == (4, 5, 6) and img.get_data_dtype() == np.int16 and int(img.header["sform_code"]) == 2


def test_same_input_gives_the_same_bytes(tmp_path):
    data = np.random.default_rng(0).integers(-1000, 1000, (9, 8, 7)).astype(np.int16)
    a = write_nifti(data, OBLIQUE, tmp_path / "a.nii.gz").read_bytes()
    b = write_nifti(data, OBLIQUE, tmp_path / "b.nii.gz").read_bytes()
    assert a == b


@pytest.mark.parametrize(
    ("name", "affine", "error", "match"),
    [
        ("seg.png", np.eye(4), ValueError, r"must end with \.nii or \.nii\.gz, got '.*seg\.png'"),
        ("seg.nii.gz", np.eye(3), ValueError, r"affine for '.*seg\.nii\.gz' must be 4x4, got shape \(3, 3\)"),
        ("missing/seg.nii.gz", np.eye(4), FileNotFoundError, "does not exist"),
    ],
)
def test_bad_requests_name_the_file(tmp_path, name, affine, error, match):
    with pytest.raises(error, match=match):
        write_nifti(np.zeros((2, 2, 2), np.uint8), affine, tmp_path / name)
