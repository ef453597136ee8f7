"""NIfTI writers: dtype choice, exact geometry, probability quantisation, atomicity, input validation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.core.arrays import as_affine, spatial_array
from pipeline.outputs.nifti import write_mask_nifti, write_probabilities_nifti

SHAPE = (33, 34, 35)


def _oblique_affine() -> np.ndarray:
    """Anisotropic (0.7, 0.9, 2.5 mm), rotated about two axes, LPS-like flips, offset origin."""
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([-0.7, -0.9, 2.5])
    aff[:3, 3] = [120.5, -33.25, -410.0]
    return aff


def _mask(top: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, SHAPE)


@pytest.mark.parametrize(
    "kind", ["numpy", "torch", "metatensor", "channel_first_tensor", "bool"], ids=lambda k: k
)
def test_mask_round_trip_exact_voxels_and_affine(tmp_path, kind):
    aff = _oblique_affine()
    mask = _mask()
    if kind == "bool":
        mask = mask > 1
    given = {
        "numpy": mask,
        "torch": torch.as_tensor(mask),
        "metatensor": MetaTensor(torch.as_tensor(mask)[None], affine=torch.as_tensor(aff)),
        "channel_first_tensor": torch.as_tensor(mask)[None],
        "bool": mask,
    }[kind]
    out = write_mask_nifti(given, None if kind == "metatensor" else aff, tmp_path / "seg.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask.astype(np.uint8))
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    assert scode == 1 and qcode == 1
    np.testing.assert_allclose(qform, aff, atol=1e-4)  # rigid + scaling: qform represents it too
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_mask_uses_uint16_for_large_labels(tmp_path):
    mask = np.zeros((5, 6, 7), np.int64)
    mask[1, 2, 3] = 300
    img = nib.load(write_mask_nifti(mask, np.eye(4), tmp_path / "m.nii"))
    assert img.get_data_dtype() == np.uint16
    assert int(np.asarray(img.dataobj)[1, 2, 3]) == 300


def test_mask_2d_keeps_shape(tmp_path):
    mask = _mask()[:, :, 0]
    img = nib.load(write_mask_nifti(mask, np.diag([0.5, 0.5, 1.0, 1.0]), tmp_path / "m.nii.gz"))
    assert img.shape == mask.shape
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)


@pytest.mark.parametrize(
    "mask, affine, path, match",
    [
        (np.full((4, 4, 4), -1), np.eye(4), "m.nii.gz", "labels must be >= 0"),
        (np.full((4, 4, 4), 0.5), np.eye(4), "m.nii.gz", "integer labels"),
        (np.full((4, 4, 4), 70000), np.eye(4), "m.nii.gz", "fit uint16"),
        (np.zeros((2, 4, 4, 4)), np.eye(4), "m.nii.gz", "single channel"),
        (np.zeros((4, 4, 4)), np.zeros((4, 4)), "m.nii.gz", "invertible"),
        (np.zeros((4, 4, 4)), np.eye(3)[:2], "m.nii.gz", "4x4"),
        (np.zeros((4, 4, 4)), None, "m.nii.gz", "affine is required"),
        (np.zeros((4, 4, 4)), np.eye(4), "m.png", "must end with .nii"),
    ],
)
def test_mask_input_errors(tmp_path, mask, affine, path, match):
    with pytest.raises(ValueError, match=match):
        write_mask_nifti(mask, affine, tmp_path / path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("dtype, tol", [("uint8", 0.5 / 255 + 1e-6), ("float32", 0.0)])
def test_probabilities_round_trip(tmp_path, dtype, tol):
    logits = torch.randn(3, *SHAPE)
    probs = torch.softmax(logits, 0)
    aff = _oblique_affine()
    img = nib.load(write_probabilities_nifti(probs, aff, tmp_path / "probs.nii.gz", dtype=dtype))
    assert img.shape == (*SHAPE, 3)
    assert img.get_data_dtype() == np.dtype(dtype)
    back = np.moveaxis(img.get_fdata(), -1, 0)
    np.testing.assert_allclose(back, probs.numpy(), atol=tol + 1e-7)
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)


def test_probabilities_2d_and_metatensor(tmp_path):
    aff = np.diag([0.8, 0.8, 1.0, 1.0])
    probs = MetaTensor(torch.full((2, 7, 9), 0.5), affine=torch.as_tensor(aff))
    img = nib.load(write_probabilities_nifti(probs, None, tmp_path / "p.nii.gz"))
    assert img.shape == (7, 9, 1, 2)
    np.testing.assert_allclose(img.get_fdata(), 128 / 255, atol=1e-6)


@pytest.mark.parametrize(
    "probs, dtype, match",
    [
        (np.full((2, 4, 4, 4), 1.5), "uint8", r"in \[0, 1\]"),
        (np.full((2, 4, 4, 4), np.nan), "float32", "finite"),
        (np.zeros((4, 4)), "uint8", r"\(C, X, Y\)"),
        (np.zeros((2, 4, 4, 4)), "float16", "dtype must be one of"),
    ],
)
def test_probabilities_input_errors(tmp_path, probs, dtype, match):
    with pytest.raises(ValueError, match=match):
        write_probabilities_nifti(probs, np.eye(4), tmp_path / "p.nii.gz", dtype=dtype)


def test_helpers_accept_2d_affine_and_reject_channels():
    aff = as_affine(np.array([[2.0, 0, 5], [0, 3.0, 6], [0, 0, 1]]))
    np.testing.assert_array_equal(aff, [[2, 0, 0, 5], [0, 3, 0, 6], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert spatial_array(torch.zeros(1, 3, 4, 5)).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="single channel"):
        spatial_array(MetaTensor(torch.zeros(2, 3, 4)))
