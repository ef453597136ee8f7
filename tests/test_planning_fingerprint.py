"""The fingerprint on tiny NIfTI datasets with known answers: RAS axis order, foreground statistics, class
sizes, and the errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.planning.fingerprint import FingerprintError, dataset_fingerprint


def _dataset(folder: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray, labels: dict) -> Path:
    """One CT case as ``folder/dataset.json`` with ``labels`` (value -> name, background included)."""
    nib.save(nib.Nifti1Image(image, affine), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "lab.nii.gz")
    datalist = {
        "channels": {"image": "CT"},
        "labels": labels,
        "training": [{"case": "a", "image": "img.nii.gz", "label": "lab.nii.gz"}],
    }
    (folder / "dataset.json").write_text(json.dumps(datalist))
    return folder / "dataset.json"


def test_spacing_and_shape_are_in_ras_order_and_statistics_inside_the_foreground(tmp_path):
    affine = np.array([[0.0, 0.0, 3.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0, 0, 0, 1]])
    image = np.arange(10 * 6 * 4, dtype=np.float32).reshape(10, 6, 4)
    label = np.zeros((10, 6, 4), np.uint8)
    label[:5] = 1
    fp = dataset_fingerprint(_dataset(tmp_path, image, label, affine, {"0": "background", "1": "x"}))
    # voxel axis k runs along x (3 mm), i along y (0.5 mm, flipped), j along z (2 mm): RAS order is (k, i, j)
    assert fp["spacing"]["median"] == pytest.approx([3.0, 0.5, 2.0])
    assert fp["shape"]["median"] == [4, 10, 6]
    inside = image[:5].ravel()
    assert fp["intensity"]["image"]["mean"] == pytest.approx(float(inside.mean()))
    assert fp["intensity"]["image"]["max"] == pytest.approx(float(inside.max()))
    assert fp["classes"]["1"]["median_voxels"] == 5 * 6 * 4
    assert fp["classes"]["1"]["median_volume_ml"] == pytest.approx(5 * 6 * 4 * 3.0 / 1000)


@pytest.mark.parametrize(
    "value, labels, message",
    [
        (3, {"0": "background", "1": "liver"}, r"label value\(s\) \[3\]"),
        (0, {"0": "background", "1": "liver"}, "no foreground label"),
    ],
)
def test_label_problems_are_named(tmp_path, value, labels, message):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image, label = np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 4), np.uint8)
    label[2:4, 2:4, 1] = value
    with pytest.raises(FingerprintError, match=message):
        dataset_fingerprint(_dataset(tmp_path, image, label, affine, labels))


def test_non_finite_voxels_are_named(tmp_path):
    image, label = np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 4), np.uint8)
    image[0, 0, 0], label[2:4, 2:4, 1] = np.nan, 1
    with pytest.raises(FingerprintError, match="non-finite"):
        dataset_fingerprint(_dataset(tmp_path, image, label, np.eye(4), {"0": "background", "1": "liver"}))


def test_a_datalist_without_channels_asks_for_an_import(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(FingerprintError, match="clinseg import"):
        dataset_fingerprint(tmp_path / "dataset.json")


@pytest.mark.parametrize(
    "shape, shift_mm, differ",
    [((8, 8, 4), 0.0, False), ((8, 8, 4), 0.0005, False), ((8, 8, 4), 0.5, True), ((8, 8, 5), 0.0, True)],
)
def test_cases_with_channels_on_different_grids_are_listed(tmp_path, shape, shift_mm, differ):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    other = affine.copy()
    other[0, 3] += shift_mm
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:5, 2:5, 1:3] = 1
    _dataset(tmp_path, np.ones((8, 8, 4), np.float32), label, affine, {"0": "background", "1": "x"})
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), other), tmp_path / "t2.nii.gz")
    datalist = json.loads((tmp_path / "dataset.json").read_text())
    datalist["channels"] = {"image": "MR", "t2": "MR"}
    datalist["training"][0]["t2"] = "t2.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    fp = dataset_fingerprint(tmp_path / "dataset.json")
    assert fp["channel_grids_differ"] == (["a"] if differ else [])
    assert fp["per_case"][0]["channel_grids_differ"] is differ
