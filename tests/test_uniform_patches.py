"""Single-valued patches are evaluated once and reused, with the same sliding-window output."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.inference.uniform_patches import UniformPatchCache
from tests.test_predictor import BUNDLE, random_checkpoint


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cached_forward_equals_the_network_and_skips_repeats(spatial_dims):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(2, 3, 3, padding=1).eval()
    image = torch.zeros(1, 2, *(40,) * spatial_dims)
    image[(0, slice(None), *(slice(12, 22),) * spatial_dims)] = torch.rand(2, *(10,) * spatial_dims)
    image[0, 1] += 0.5  # a second channel with another constant: the key holds every channel's value
    cache = UniformPatchCache(conv)
    inferer = SlidingWindowInferer(roi_size=(8,) * spatial_dims, sw_batch_size=3, overlap=0.5)
    with torch.no_grad():
        expected, got = inferer(image, conv), inferer(image, cache)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    patches = 9**spatial_dims  # 9 positions per axis (stride 4 over 40 voxels)
    assert cache.evaluated < patches / 2
    with torch.no_grad():
        inferer(image, cache)
    assert cache.evaluated < patches  # the second image reuses the cached uniform outputs


def test_predictor_skips_air_with_the_same_probabilities(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "model.pt", seed=3)
    hu = np.full((80, 64, 32), -1000.0, np.float32)
    hu[20:44, 18:40, 8:20] = 40.0
    hu[30:36, 25:30, 10:14] = 300.0
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([1.6, 1.6, 2.5, 1.0])), path)
    options = {"roi_size": (32, 32, 16), "device": "cpu", "amp": False, "uncertainty": False}
    fast = Predictor.from_bundle(BUNDLE, checkpoint, options=InferenceOptions(**options))
    full = Predictor.from_bundle(
        BUNDLE, checkpoint, options=InferenceOptions(**options, skip_uniform_patches=False)
    )
    data = fast.load(path)
    torch.testing.assert_close(fast.probabilities(data), full.probabilities(data), rtol=0, atol=1e-5)
    assert 0 < fast._forwards[0].evaluated < 4 * 4 * 3  # fewer than the 48 patches of the whole grid
