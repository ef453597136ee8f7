"""Registration: geometry conversions, known transforms recovered (real MR, synthetic CT/MR), ``clinseg register``."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, SpaceKeys

from pipeline.cli import main
from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.synthetic.phantoms import make_phantom
from tests.known_transform import known_affine_case, max_error_mm, rotation_error_deg, voxel_points
from transforms.io.scan import load_scan
from transforms.geometry.registration import (
    RegisterToReferenced,
    RegistrationOptions,
    from_sitk,
    read_image,
    register_images,
    to_sitk,
)

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
OFFSET_RAS = np.array([7.3, -4.6, 3.1])  # mm, MR relative to CT
PAD = 6  # voxels of air around the phantom: the body lies inside the field of view, as in a head scan


def _ct_mr_pair() -> tuple[MetaTensor, MetaTensor, np.ndarray]:
    """A synthetic CT and the same anatomy's MR (other contrast) shifted by :data:`OFFSET_RAS`, padded with air.

    Returns ``(ct, mr, body)``: channel-first MetaTensors ``(1, X, Y, Z)`` and the CT's body mask ``(X, Y, Z)``.
    """
    phantom = make_phantom(4, shape=(44, 44, 28), spacing=(2.0, 2.0, 2.5))
    pad = ((PAD, PAD),) * 3
    ct = np.pad(phantom.ct.astype(np.float32), pad, constant_values=-1000.0)
    mr = np.pad(phantom.mr.astype(np.float32), pad, constant_values=0.0)
    affine = phantom.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, PAD)
    moved = affine.copy()
    moved[:3, 3] += OFFSET_RAS
    meta = {MetaKeys.SPACE: SpaceKeys.RAS}
    return (
        MetaTensor(torch.from_numpy(ct[None]), affine=torch.as_tensor(affine), meta=dict(meta)),
        MetaTensor(torch.from_numpy(mr[None]), affine=torch.as_tensor(moved), meta=dict(meta)),
        ct > -500.0,
    )


def _offset(point: np.ndarray) -> np.ndarray:
    """Where the true fixed -> moving map sends an LPS point of the CT: shifted by the MR's offset."""
    return point + OFFSET_RAS * RAS_TO_LPS


@pytest.mark.parametrize("oblique", [False, True])
def test_to_sitk_places_voxels_where_the_ras_affine_does(oblique):
    phantom = make_phantom(1, shape=(33, 34, 5), spacing=(0.9, 1.1, 3.0), oblique=oblique)
    image = to_sitk(phantom.ct[None].astype(np.float32), phantom.affine)
    for index in ([0, 0, 0], [32, 1, 4], [5, 33, 2]):
        ras = (phantom.affine @ [*index, 1.0])[:3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), ras * RAS_TO_LPS, atol=1e-9)
        assert image[index] == phantom.ct[tuple(index)]
    array, affine = from_sitk(image)
    np.testing.assert_allclose(affine, phantom.affine, atol=1e-9)
    np.testing.assert_array_equal(array, phantom.ct)


def test_to_sitk_keeps_an_lps_metatensor_as_it_is():
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS +x is RAS -x
    image = MetaTensor(
        torch.zeros(1, 4, 5, 6), affine=torch.as_tensor(affine), meta={MetaKeys.SPACE: SpaceKeys.LPS}
    )
    converted = to_sitk(image)
    np.testing.assert_allclose(converted.GetSpacing(), [1.5, 1.5, 2.0])
    np.testing.assert_allclose(np.reshape(converted.GetDirection(), (3, 3)), np.diag([-1.0, -1.0, 1.0]))


@pytest.mark.realdata
def test_load_scan_converts_like_simpleitk_reads(shared_data):
    path = shared_data / "pyradiomics" / "brain1_image.nii.gz"
    converted, reference = to_sitk(load_scan(path)), sitk.ReadImage(str(path), sitk.sitkFloat32)
    np.testing.assert_allclose(converted.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(converted.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(converted.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(reference)
    )


def test_read_image_places_a_dicom_series_as_simpleitk_reads_it(tmp_path):
    phantom = make_phantom(2, shape=(32, 30, 6), spacing=(1.2, 1.3, 2.5), oblique=True)
    write_dicom_series(phantom.ct, phantom.affine, tmp_path / "ct", uid_seed="registration")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    reference, converted = reader.Execute(), read_image(tmp_path / "ct")
    np.testing.assert_allclose(converted.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(converted.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(converted.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(converted), sitk.GetArrayViewFromImage(reference)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": 0}, "seed must be >= 1"),
        ({"sampling": 0.0}, "sampling"),
        ({"shrink": (4, 2), "smoothing_mm": (1.0,)}, "one entry per pyramid level"),
        ({"init": "centre"}, "init must be one of"),
        ({"bins": 2}, "bins >= 4"),
    ],
)
def test_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegistrationOptions(**kwargs)


def test_images_of_different_dimension_are_refused():
    with pytest.raises(ValueError, match="fixed is 3D but moving is 2D"):
        register_images(sitk.Image([8, 8, 8], sitk.sitkFloat32), sitk.Image([8, 8], sitk.sitkFloat32))


@pytest.mark.slow
@pytest.mark.realdata
def test_known_rigid_and_affine_transform_is_recovered_on_real_mr(shared_data):
    """BRATS T1c at 3 mm, moved by rotations 5/-3/4 degrees, translation 6/-4/3 mm, scaling and shear."""
    case = known_affine_case(
        shared_data / "brats" / "brats_2013_pat0003_1" / "T1c_subtrMeanDivStd.nii.gz", 3.0
    )
    result = register_images(case.fixed, case.moving, options=RegistrationOptions(iterations=100))

    found = np.reshape(sitk.AffineTransform(result.transform.GetNthTransform(0)).GetMatrix(), (3, 3))
    assert max_error_mm(result.transform, case.truth, case.brain) < 1.0
    assert rotation_error_deg(found, case.matrix) < 1.0
    assert [s["stage"] for s in result.stages] == ["rigid", "affine"] and result.metric < 0


@pytest.mark.slow
def test_synthetic_ct_and_mr_with_a_known_offset_are_aligned():
    """Mutual information aligns CT to MR (different contrasts) within 1 mm; the output is on the CT's grid."""
    ct, mr, body = _ct_mr_pair()
    two_channels = MetaTensor(
        torch.cat([mr.as_tensor(), 2.0 * mr.as_tensor()]),
        affine=mr.affine,
        meta={MetaKeys.SPACE: SpaceKeys.RAS},
    )
    out = RegisterToReferenced(keys="mr", reference_key="ct", options={"iterations": 100})(
        {"ct": ct, "mr": two_channels}
    )

    aligned, record = out["mr"], out["mr"].meta["registration"]
    assert aligned.shape == (2, *ct.shape[1:])
    np.testing.assert_allclose(aligned.affine.numpy(), ct.affine.numpy())
    torch.testing.assert_close(aligned[1], 2.0 * aligned[0])
    found = sitk.AffineTransform(3)
    found.SetMatrix(record["matrix"])
    found.SetTranslation(record["translation"])
    found.SetCenter(record["center"])
    fixed = to_sitk(ct)
    assert max_error_mm(found, _offset, voxel_points(fixed, body.transpose(2, 1, 0))) < 1.0
    assert record["reference"] == "ct" and not record["deformable"]


def test_register_to_referenced_names_bad_keys():
    with pytest.raises(ValueError, match="reference_key 'ct' is also among keys"):
        RegisterToReferenced(keys=["ct", "mr"], reference_key="ct")
    with pytest.raises(KeyError, match="reference key 'ct' is missing"):
        RegisterToReferenced(keys="mr", reference_key="ct")({"mr": MetaTensor(torch.zeros(1, 4, 4, 4))})
    with pytest.raises(TypeError, match="'ct' must be a MetaTensor"):
        RegisterToReferenced(keys="mr", reference_key="ct")({"ct": "ct.nii.gz", "mr": "mr.nii.gz"})


def test_2d_images_register_with_2d_transforms():
    fixed = sitk.GaussianSource(sitk.sitkFloat32, [48, 40], sigma=[6.0, 4.0], mean=[22.0, 20.0], scale=100.0)
    moving = sitk.GaussianSource(sitk.sitkFloat32, [48, 40], sigma=[6.0, 4.0], mean=[25.5, 18.0], scale=100.0)
    options = RegistrationOptions(iterations=50, shrink=(2, 1), smoothing_mm=(1.0, 0.0))
    result = register_images(fixed, moving, options=options)
    np.testing.assert_allclose(result.transform.TransformPoint((22.0, 20.0)), (25.5, 18.0), atol=0.2)
    assert result.transform.GetNthTransform(0).GetDimension() == 2


def test_deformable_adds_a_bspline_stage():
    image = sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 16], sigma=[5.0, 4.0, 3.0], mean=[11.0, 12.0, 8.0])
    moving = sitk.GaussianSource(
        sitk.sitkFloat32, [24, 24, 16], sigma=[5.0, 4.0, 3.0], mean=[12.0, 11.0, 8.0]
    )
    options = RegistrationOptions(iterations=3, shrink=(1,), smoothing_mm=(0.0,), mesh_mm=12.0)
    result = register_images(image, moving, deformable=True, options=options)
    assert [s["stage"] for s in result.stages] == ["rigid", "affine", "bspline"]
    assert result.transform.GetNumberOfTransforms() == 2
    assert isinstance(result.transform.GetNthTransform(1).Downcast(), sitk.BSplineTransform)


def _write_pair(tmp_path, dicom: bool) -> tuple[str, str, np.ndarray]:
    """The CT (a NIfTI file or a DICOM series folder) and the shifted MR (NIfTI) of :func:`_ct_mr_pair`."""
    ct, mr, body = _ct_mr_pair()
    fixed, moving = tmp_path / ("ct" if dicom else "ct.nii.gz"), tmp_path / "mr.nii.gz"
    if dicom:
        write_dicom_series(ct[0].numpy(), ct.affine.numpy(), fixed, uid_seed="registration")
    else:
        nib.save(nib.Nifti1Image(ct[0].numpy(), ct.affine.numpy()), fixed)
    nib.save(nib.Nifti1Image(mr[0].numpy(), mr.affine.numpy()), moving)
    return str(fixed), str(moving), body


@pytest.mark.slow
@pytest.mark.parametrize("dicom", [False, True], ids=["nifti", "dicom"])
def test_clinseg_register_writes_the_aligned_scan_on_the_fixed_grid_and_the_transform(
    tmp_path, capsys, dicom
):
    fixed, moving, body = _write_pair(tmp_path, dicom)
    out = tmp_path / "mr_on_ct.nii.gz"

    assert main(["register", fixed, moving, str(out)]) == 0

    written, reference = nib.load(out), load_scan(fixed)
    np.testing.assert_allclose(written.affine, reference.affine.numpy(), atol=1e-4)
    assert written.shape == tuple(reference.shape[1:])
    transform = sitk.ReadTransform(str(tmp_path / "mr_on_ct.tfm"))
    assert max_error_mm(transform, _offset, voxel_points(to_sitk(reference), body.transpose(2, 1, 0))) < 1.0
    printed = capsys.readouterr().out
    assert "final metric (Mattes MI): -" in printed and "rigid + affine" in printed
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("which", ["fixed", "moving"])
def test_clinseg_register_names_a_missing_scan(tmp_path, caplog, which):
    present = tmp_path / "present.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), present)
    missing = tmp_path / "absent.nii.gz"
    paths = [str(missing), str(present)] if which == "fixed" else [str(present), str(missing)]
    with caplog.at_level(logging.ERROR, logger="clinseg"):
        assert main(["register", *paths, str(tmp_path / "out.nii.gz")]) == 2
    assert f"{missing}: no such file or folder" in caplog.text
    assert not (tmp_path / "out.nii.gz").exists()


def test_clinseg_register_refuses_an_output_that_is_not_nifti(tmp_path, caplog):
    for name in ("a.nii.gz", "b.nii.gz"):  # the inputs exist: the output's format is what is wrong
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / name)
    with caplog.at_level(logging.ERROR, logger="clinseg"):
        assert main(["register", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), str(tmp_path / "out.png")]) == 2
    assert "out.png: the output must be a .nii or .nii.gz file" in caplog.text
