"""ForegroundZScored: z-score inside the voxels above each channel's minimum, background to 0, meta kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms.intensity.foreground_zscore import ForegroundZScore, ForegroundZScored


@pytest.mark.parametrize("background", [-3.16, 0.0, 250.0])
def test_foreground_is_z_scored_and_background_zeroed(background):
    img = torch.full((2, 6, 5, 4), background)
    rng = np.random.default_rng(0)
    values = torch.as_tensor(rng.normal(500.0, 40.0, (2, 3, 3, 2)), dtype=torch.float32) + abs(background) + 1
    img[:, 1:4, 1:4, 1:3] = values
    out = ForegroundZScore()(img)
    for c in range(2):
        inside = out[c, 1:4, 1:4, 1:3]
        assert float(inside.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(inside.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        mask = torch.ones(6, 5, 4, dtype=torch.bool)
        mask[1:4, 1:4, 1:3] = False
        assert torch.all(out[c][mask] == 0)


def test_dict_version_keeps_meta_and_leaves_other_keys():
    img = MetaTensor(torch.zeros(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    img[0, 1:3, 1:3, 1:3] = torch.arange(1.0, 9.0).reshape(2, 2, 2)
    label = torch.ones(1, 4, 4, 4)
    out = ForegroundZScored(keys="image")({"image": img, "label": label})
    assert isinstance(out["image"], MetaTensor)
    np.testing.assert_allclose(out["image"].affine.numpy(), img.affine.numpy())
    assert out["label"] is label


def test_a_constant_channel_becomes_zeros():
    assert torch.count_nonzero(ForegroundZScore()(torch.full((1, 3, 3, 3), 7.0))) == 0
