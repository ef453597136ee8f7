"""Synthetic phantoms: determinism, anatomy and intensities, geometry, files and the MSD datalist."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from pipeline.synthetic.phantoms import LABELS, Phantom, make_phantom, synthesize, write_case
from pipeline.synthetic.anatomy import TISSUES, draw_tissues

REPO = Path(__file__).resolve().parents[1]
SMALL = (48, 44, 12)
SPACING = (0.8, 0.8, 2.5)


def _tissues(seed: int, shape=SMALL, spacing=SPACING) -> np.ndarray:
    """The tissue map make_phantom draws first from default_rng(seed)."""
    return draw_tissues(np.random.default_rng(seed), shape, spacing)


def test_same_seed_is_bit_identical_and_oblique_changes_only_geometry():
    a, b = make_phantom(7, shape=SMALL), make_phantom(7, shape=SMALL)
    for name in ("ct", "mr", "label", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    tilted = make_phantom(7, shape=SMALL, oblique=True)
    np.testing.assert_array_equal(a.ct, tilted.ct)
    np.testing.assert_array_equal(a.label, tilted.label)
    assert not np.allclose(a.affine, tilted.affine)


def test_different_seeds_differ():
    a, b = make_phantom(1, shape=SMALL), make_phantom(2, shape=SMALL)
    assert not np.array_equal(a.label, b.label)
    assert not np.array_equal(a.ct, b.ct)
    assert not np.allclose(a.affine, b.affine)


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_dtypes_labels_inside_body_and_lesion_strictly_inside_organ(seed):
    phantom = make_phantom(seed, shape=SMALL)
    assert (phantom.ct.dtype, phantom.mr.dtype, phantom.label.dtype) == (np.int16, np.int16, np.uint8)
    assert phantom.ct.shape == phantom.mr.shape == phantom.label.shape == SMALL
    assert set(np.unique(phantom.label)) == set(LABELS)
    body = _tissues(seed) != TISSUES["air"]
    labelled = phantom.label > 0
    assert np.all(body[labelled])
    assert np.all(phantom.ct[labelled] > -500)
    organ_or_lesion = ndimage.binary_erosion(labelled, structure=ndimage.generate_binary_structure(3, 1))
    assert np.all(organ_or_lesion[phantom.label == 2])


@pytest.mark.parametrize("seed", [0, 3])
def test_tissue_intensities_are_plausible(seed):
    phantom = make_phantom(seed, shape=SMALL)
    tissues = _tissues(seed)
    np.testing.assert_array_equal(tissues == TISSUES["organ"], phantom.label == 1)
    present = {name: tissues == code for name, code in TISSUES.items() if (tissues == code).any()}
    ct = {name: float(phantom.ct[mask].mean()) for name, mask in present.items()}
    assert abs(ct["air"] + 1000) < 15
    assert ct["fat"] < -50
    assert 80 < ct["organ"] < 140  # contrast-enhanced (portal-venous) organ
    assert ct["lesion"] < ct["organ"] - 10
    bone = np.isin(tissues, [TISSUES["cortical_bone"], TISSUES["cancellous_bone"]])
    assert phantom.ct[bone].mean() > 250
    mr = {name: float(phantom.mr[mask].mean()) for name, mask in present.items()}
    assert phantom.mr.min() >= 0
    assert mr["fat"] > mr["organ"] > mr["lesion"] > mr["air"]
    assert mr["cortical_bone"] < mr["muscle"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_organ_is_large_and_varies(seed):
    phantom = make_phantom(seed)
    assert phantom.ct.shape == (128, 128, 40)
    body = (_tissues(seed, (128, 128, 40)) != TISSUES["air"]).sum()
    assert 0.15 <= (phantom.label > 0).sum() / body <= 0.25


def test_affine_spacing_orientation_and_origin():
    straight = make_phantom(4, shape=SMALL)
    spacing = np.linalg.norm(straight.affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, SPACING)
    np.testing.assert_allclose(straight.affine[:3, :3], np.diag(SPACING))
    assert np.linalg.norm(straight.affine[:3, 3]) > 10
    tilted = make_phantom(4, shape=SMALL, oblique=True)
    block = tilted.affine[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(block, axis=0), SPACING)
    assert np.linalg.det(block) > 0
    assert np.abs(block - np.diag(np.diag(block))).max() > 0.1
    direction = block / np.array(SPACING)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    assert 10 <= np.degrees(np.arccos(direction[0, 0])) <= 26


def test_two_dimensional_phantom():
    phantom = make_phantom(3, spatial_dims=2)
    assert phantom.ct.shape == phantom.mr.shape == phantom.label.shape == (160, 160)
    assert set(np.unique(phantom.label)) == {0, 1, 2}
    np.testing.assert_allclose(np.linalg.norm(phantom.affine[:3, :3], axis=0), [0.8, 0.8, 1.0])
    tissues = _tissues(3, (160, 160), (0.8, 0.8))
    assert np.all(tissues[phantom.label > 0] != TISSUES["air"])
    eroded = ndimage.binary_erosion(phantom.label > 0)
    assert np.all(eroded[phantom.label == 2])
    assert phantom.ct[phantom.label == 2].mean() < phantom.ct[phantom.label == 1].mean()


def test_write_case_nifti_is_byte_identical_with_geometry(tmp_path):
    phantom = make_phantom(9, shape=SMALL, oblique=True)
    first = write_case(phantom, tmp_path / "a")
    write_case(make_phantom(9, shape=SMALL, oblique=True), tmp_path / "b")
    assert first == {"ct": "ct.nii.gz", "mr": "mr.nii.gz", "label": "label.nii.gz"}
    for rel in first.values():
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ct.nii.gz", "label.nii.gz", "mr.nii.gz"]
    for key, dtype in (("ct", np.int16), ("mr", np.int16), ("label", np.uint8)):
        image = nib.load(tmp_path / "a" / first[key])
        assert image.get_data_dtype() == dtype
        assert int(image.header["sform_code"]) == int(image.header["qform_code"]) == 1
        np.testing.assert_allclose(image.get_sform(), phantom.affine, atol=1e-5)
        np.testing.assert_allclose(image.get_qform(), phantom.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(image.dataobj), getattr(phantom, key))


def _read_dicom_series(folder) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) HU and RAS affine by the project convention, straight from pydicom."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    hu = [ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices]
    volume = np.stack(hu, axis=2)
    first = np.array(slices[0].ImagePositionPatient, float)
    last = np.array(slices[-1].ImagePositionPatient, float)
    step = (last - first) / (len(slices) - 1) if len(slices) > 1 else normal
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dx, col * dy, step, first
    return volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("oblique", [False, True])
def test_write_case_dicom_matches_ct_voxels_and_affine(tmp_path, oblique):
    phantom = make_phantom(2, shape=SMALL, oblique=oblique)
    written = write_case(phantom, tmp_path, formats=("nifti", "dicom"), uid_seed="test")
    assert written["ct_dicom"] == "ct_dicom"
    files = sorted((tmp_path / "ct_dicom").iterdir())
    assert len(files) == SMALL[2]
    volume, affine = _read_dicom_series(tmp_path / "ct_dicom")
    np.testing.assert_array_equal(volume, phantom.ct)
    np.testing.assert_allclose(affine, phantom.affine, atol=1e-4)
    first_bytes = [f.read_bytes() for f in files]
    write_case(phantom, tmp_path, formats=("dicom",), uid_seed="test")  # rewrite over the existing series
    assert [f.read_bytes() for f in sorted((tmp_path / "ct_dicom").iterdir())] == first_bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_case_dicom_two_dimensional_is_one_slice(tmp_path):
    phantom = make_phantom(1, spatial_dims=2, shape=(40, 36))
    written = write_case(phantom, tmp_path, formats=("dicom",))
    assert set(written) == {"ct_dicom", "mr", "label"}
    volume, affine = _read_dicom_series(tmp_path / "ct_dicom")
    np.testing.assert_array_equal(volume[..., 0], phantom.ct)
    np.testing.assert_allclose(affine[:3, :2], phantom.affine[:3, :2], atol=1e-4)


def test_synthesize_writes_dataset_json_with_deterministic_splits(tmp_path):
    path = synthesize(tmp_path / "a", cases=4, seed=3, spatial_dims=2)
    again = synthesize(tmp_path / "b", cases=4, seed=3, spatial_dims=2)
    assert path == tmp_path / "a" / "dataset.json"
    assert path.read_bytes() == again.read_bytes()
    data = json.loads(path.read_text())
    assert data["name"] == "clinseg-synthetic" and data["tensorImageSize"] == "2D"
    assert data["modality"] == {"0": "CT", "1": "MR"}
    assert data["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    parts = [data["training"], data["validation"], data["test"]]
    assert [data["numTraining"], data["numValidation"], data["numTest"]] == [len(p) for p in parts]
    assert all(len(p) >= 1 for p in parts)
    assert sorted(e["case"] for p in parts for e in p) == [f"case_{i:03d}" for i in range(4)]
    for entry in (e for p in parts for e in p):
        assert set(entry) == {"case", "image", "mr", "label"}
        assert entry["image"] == f"patients/{entry['case']}/ct.nii.gz"
        for key in ("image", "mr", "label"):
            assert (tmp_path / "a" / entry[key]).is_file()
            assert (tmp_path / "a" / entry[key]).read_bytes() == (tmp_path / "b" / entry[key]).read_bytes()
    affines = [nib.load(tmp_path / "a" / f"patients/case_{i:03d}/ct.nii.gz").affine for i in range(3)]
    assert np.count_nonzero(affines[2][:3, :3] - np.diag(np.diag(affines[2][:3, :3]))) > 0
    assert all(np.count_nonzero(a[:3, :3] - np.diag(np.diag(a[:3, :3]))) == 0 for a in affines[:2])
    assert synthesize(tmp_path / "c", cases=4, seed=4, spatial_dims=2).read_bytes() != path.read_bytes()


def test_synthesize_dicom_only_points_image_at_series(tmp_path):
    data = json.loads(synthesize(tmp_path, cases=1, spatial_dims=2, formats=["dicom"]).read_text())
    assert data["numTraining"] == 1 and data["numValidation"] == data["numTest"] == 0
    entry = data["training"][0]
    assert entry["image"] == entry["ct_dicom"] == "patients/case_000/ct_dicom"
    assert (tmp_path / entry["label"]).is_file() and (tmp_path / entry["mr"]).is_file()
    assert len(list((tmp_path / entry["ct_dicom"]).iterdir())) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cases": 0}, "cases must be an integer >= 1"),
        ({"cases": 2.5}, "cases must be an integer >= 1"),
        ({"cases": 1, "spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"cases": 1, "formats": ("nifti", "png")}, "formats must be a non-empty subset"),
        ({"cases": 1, "formats": ()}, "formats must be a non-empty subset"),
        ({"cases": 1, "seed": -1}, "seed must be a non-negative integer"),
        ({"cases": 3, "splits": (0.5, 0.2, 0.2)}, "splits must be 3 non-negative fractions"),
        ({"cases": 3, "splits": (0.0, 0.5, 0.5)}, "splits must be 3 non-negative fractions"),
    ],
)
def test_synthesize_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthesize(tmp_path, **kwargs)
    assert not (tmp_path / "dataset.json").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 2, "shape": (32, 32, 8)}, "shape must be 2 positive integers"),
        ({"shape": (8, 40, 10)}, "at least 16 voxels"),
        ({"shape": SMALL, "spacing": (0.8, 0.0, 2.5)}, "spacing must be 3 positive finite"),
        ({"spatial_dims": True}, "spatial_dims must be 2 or 3"),
    ],
)
def test_make_phantom_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(0, **kwargs)


def test_write_case_rejects_mismatched_arrays(tmp_path):
    good = make_phantom(0, spatial_dims=2, shape=(32, 32))
    bad = Phantom(ct=good.ct, mr=good.mr[:-1], label=good.label, affine=good.affine)
    with pytest.raises(ValueError, match="share one grid"):
        write_case(bad, tmp_path)


def test_example_datalist_matches_what_synthesize_writes(tmp_path):
    example = json.loads((REPO / "data" / "example_datalist.json").read_text())
    path = synthesize(tmp_path, cases=3, seed=0, spatial_dims=2, formats=("nifti", "dicom"))
    written = json.loads(path.read_text())
    assert example["tensorImageSize"] == "3D" and written["tensorImageSize"] == "2D"
    for key in ("tensorImageSize", "description"):
        example.pop(key), written.pop(key)
    assert example == written
