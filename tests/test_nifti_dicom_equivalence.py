"""The same synthetic case written as NIfTI and as a DICOM series loads to the same voxels and affine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transforms.io.scan import load_scan


def _entries(dataset_json):
    content = json.loads(dataset_json.read_text())
    return [e for split in ("training", "validation", "test") for e in content[split]]


@pytest.mark.parametrize("index", range(6))
def test_nifti_and_dicom_load_identically(tiny_dataset, index):
    entry = _entries(tiny_dataset)[index]
    root = tiny_dataset.parent
    from_nifti = load_scan(root / entry["image"])
    from_dicom = load_scan(root / entry["ct_dicom"])
    assert from_nifti.shape == from_dicom.shape
    np.testing.assert_array_equal(from_nifti.numpy(), from_dicom.numpy())
    np.testing.assert_allclose(from_nifti.affine.numpy(), from_dicom.affine.numpy(), atol=1e-4)


def test_oblique_cases_are_present(tiny_dataset):
    affines = [load_scan(tiny_dataset.parent / e["ct_dicom"]).affine.numpy() for e in _entries(tiny_dataset)]
    oblique = [a for a in affines if np.count_nonzero(np.abs(a[:3, :3]) > 1e-6) > 3]
    assert oblique, "the tiny dataset must hold at least one non-identity-direction case"
