"""Same scan, same grid: the resampled grid's shape does not depend on sub-micrometre affine noise.

Unit tests on a span of exactly half a voxel (MONAI's ``Spacingd`` rounds it by the noise's sign), then a real
DICOM series and its NIfTI conversion (float32 header, ~1e-7 mm off) through the ``Predictor``.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.data.utils import compute_shape_offset, zoom_affine
from monai.transforms import Spacingd

from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.test_predictor import BUNDLE, random_checkpoint
from transforms.io.scan import load_scan
from transforms.geometry.spacing import StableSpacingd, stable_grid_shape

# 130 voxels of 1 mm -> 2 mm: the span is 64.5 output voxels, on the rounding boundary
HALF_SHAPE, HALF_PIXDIM = (130, 12, 6), (2.0, 2.0, 2.0)


def _image(eps_mm: float, rotate: bool = False) -> MetaTensor:
    affine = np.diag([1.0 + eps_mm, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-40.3, 12.1, 7.0)
    if rotate:  # axes swapped and flipped, as Orientationd leaves them alone here
        affine[:3, :3] = affine[:3, :3] @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    data = torch.linspace(0.0, 1.0, int(np.prod(HALF_SHAPE))).reshape(1, *HALF_SHAPE)
    return MetaTensor(data, affine=torch.as_tensor(affine))


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("eps_mm", [-1e-6, 1e-6, -1e-7, 4.4e-6])
def test_affine_noise_keeps_the_grid(eps_mm, rotate):
    exact = StableSpacingd("image", pixdim=HALF_PIXDIM)({"image": _image(0.0, rotate)})["image"]
    noisy = StableSpacingd("image", pixdim=HALF_PIXDIM)({"image": _image(eps_mm, rotate)})["image"]
    assert noisy.shape == exact.shape
    assert noisy.shape[1] == 66  # a span of 64.5 voxels rounds up: the grid covers the input
    np.testing.assert_allclose(noisy.affine.numpy(), exact.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(noisy.numpy(), exact.numpy(), atol=1e-4)


def test_monai_alone_splits_on_this_boundary():
    """The case above is the failing one: MONAI's own Spacingd gives two shapes for +-1e-6 mm."""
    shapes = {
        Spacingd("image", pixdim=HALF_PIXDIM)({"image": _image(e)})["image"].shape for e in (-1e-6, 1e-6)
    }
    assert len(shapes) == 2


@pytest.mark.parametrize("rotate", [False, True])
def test_grid_off_the_boundary_is_monais(rotate):
    """Away from a half voxel the shape, affine and values are MONAI's own."""
    pixdim = (1.7, 1.9, 2.3)
    ours = StableSpacingd("image", pixdim=pixdim)({"image": _image(1e-6, rotate)})["image"]
    monai = Spacingd("image", pixdim=pixdim)({"image": _image(1e-6, rotate)})["image"]
    assert ours.shape == monai.shape
    np.testing.assert_array_equal(ours.affine.numpy(), monai.affine.numpy())
    np.testing.assert_array_equal(ours.numpy(), monai.numpy())


def test_inverse_restores_the_input_grid():
    spacing = StableSpacingd("image", pixdim=HALF_PIXDIM, dtype=torch.float32)
    out = spacing({"image": _image(-1e-6)})
    back = spacing.inverse(out)["image"]
    assert back.shape == (1, *HALF_SHAPE)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale_extent", [False, True])
def test_shape_is_monais_off_the_boundary(seed, scale_extent):
    rng = np.random.default_rng(seed)
    shape = rng.integers(5, 60, size=3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q * rng.uniform(0.5, 3.0, size=3)
    affine[:3, 3] = rng.normal(size=3) * 50
    out_affine = zoom_affine(affine, np.array([1.3, 0.9, 2.1]))
    expected, _ = compute_shape_offset(shape, affine, out_affine, scale_extent)
    got = stable_grid_shape(shape, affine, out_affine, scale_extent=scale_extent, tolerance=0.0)
    assert got == tuple(int(n) for n in expected)


def test_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        StableSpacingd("image", pixdim=HALF_PIXDIM, tolerance=-1.0)


@pytest.mark.slow
def test_dicom_and_its_nifti_give_the_same_grid_and_mask(shared_data, tmp_path):
    """ct_3slice as DICOM and as SimpleITK's NIfTI (float32 header): with a target spacing that puts the
    in-plane span on a half voxel between the two, MONAI alone would give grids one voxel apart."""
    folder = shared_data / "dcmqi" / "ct_3slice"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    nifti = tmp_path / "ct_3slice.nii.gz"
    sitk.WriteImage(reader.Execute(), str(nifti))
    dicom_affine, nifti_affine = load_scan(folder).affine.numpy(), load_scan(nifti).affine.numpy()
    assert 0 < np.abs(dicom_affine - nifti_affine).max() < 1e-5  # the conversion's noise, sub-micrometre
    n = 512
    mean_pixel = (np.linalg.norm(dicom_affine[:3, 0]) + np.linalg.norm(nifti_affine[:3, 0])) / 2
    target = (n - 1) * mean_pixel / (np.floor((n - 1) * mean_pixel / 3.2) + 0.5)  # ~3.2 mm, span k + 0.5
    spans = [(n - 1) * np.linalg.norm(a[:3, 0]) / target for a in (dicom_affine, nifti_affine)]
    assert np.round(spans[0] + 1) != np.round(spans[1] + 1), "the case must straddle MONAI's rounding"

    checkpoint = random_checkpoint(tmp_path / "model.pt")
    options = InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=options, spacing=[target, target, 2.5])
    grids = [predictor.load(p).data["image"] for p in (folder, nifti)]
    assert grids[0].shape == grids[1].shape
    np.testing.assert_allclose(grids[0].affine.numpy(), grids[1].affine.numpy(), atol=1e-4)
    masks = [predictor.predict(p).labels for p in (folder, nifti)]
    assert masks[0].shape == masks[1].shape == (1, 512, 512, 3)
    np.testing.assert_array_equal(masks[0].numpy(), masks[1].numpy())
