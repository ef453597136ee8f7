"""Real de-identified scans (../shared/data): DICOM series land on the grids of their reference masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from transforms.io.scan import load_scan


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    return np.asarray(img.dataobj), img.affine


def test_totalseg_jpeg2000_series_aligns_with_its_mask(shared_data):
    ct = load_scan(shared_data / "totalseg" / "ct_dicom")
    seg = nib.load(shared_data / "totalseg" / "ct_dicom_seg.nii.gz")
    assert ct.shape == (1, *seg.shape) == (1, 512, 512, 20)
    hu, hu_affine = _canonical(ct.numpy()[0], ct.meta["original_affine"])
    labels, seg_affine = _canonical(np.asarray(seg.dataobj), seg.affine)
    np.testing.assert_allclose(hu_affine, seg_affine, atol=1e-3)
    assert 0 < hu[labels == 5].mean() < 150  # liver: soft tissue
    assert hu[labels == 0].mean() < -500  # background: mostly air around the body
    assert hu[(labels >= 25) & (labels <= 50)].mean() > 150  # vertebrae: bone
    assert ct.meta["Manufacturer"] == "SIEMENS" and len(ct.meta["dicom_files"]) == 20


def test_totalseg_flipped_mask_would_not_align(shared_data):
    ct = load_scan(shared_data / "totalseg" / "ct_dicom")
    labels = np.asarray(nib.load(shared_data / "totalseg" / "ct_dicom_seg.nii.gz").dataobj)
    hu = ct.numpy()[0]
    aligned, flipped = hu[labels == 5].mean(), hu[labels[:, ::-1] == 5].mean()
    assert abs(aligned - flipped) > 20  # the check above can tell a wrong orientation apart


def test_dcmqi_three_slices_align_with_liver_mask(shared_data):
    ct = load_scan(shared_data / "dcmqi" / "ct_3slice")
    seg = nib.load(shared_data / "dcmqi" / "liver_seg.nii.gz")
    assert ct.shape == (1, *seg.shape)
    np.testing.assert_allclose(ct.meta["original_affine"], seg.affine, atol=1e-3)
    assert 0 < ct.numpy()[0][np.asarray(seg.dataobj) == 1].mean() < 150


def test_patient_folder_with_seg_and_nifti_picks_the_ct(shared_data):
    ct = load_scan(shared_data / "dcmqi")  # holds liver_seg.dcm (SEG, ignored), NIfTI files and ct_3slice/
    assert ct.shape == (1, 512, 512, 3) and ct.meta["modality"] == "CT"


@pytest.mark.parametrize("folder", ["totalseg/ct_dicom", "dcmqi/ct_3slice"])
def test_matches_simpleitk_on_real_series(shared_data, folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(shared_data / folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ours = load_scan(shared_data / folder)
    np.testing.assert_array_equal(ours.numpy()[0], sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    np.testing.assert_allclose(ours.meta["original_affine"], np.diag([-1.0, -1, 1, 1]) @ lps, atol=1e-3)


@pytest.mark.parametrize("name", ["ct_sm.nii.gz", "mr_sm.nii.gz"])
def test_real_nifti_matches_nibabel(shared_data, name):
    img = nib.load(shared_data / "totalseg" / name)
    ours = load_scan(shared_data / "totalseg" / name)
    np.testing.assert_array_equal(ours.numpy()[0], img.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(ours.meta["original_affine"], img.affine)
