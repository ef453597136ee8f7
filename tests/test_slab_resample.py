"""Slab-wise resampling back onto the input grid agrees with MONAI's SpatialResample for any slab size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from transforms.geometry.slab_resample import argmax_labels, resample_slabwise


def _affines(spatial_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """An oblique source grid (1.6 x 1.6 x 2.5 mm, shifted) and an LPS-like destination grid."""
    src, dst = np.eye(4), np.eye(4)
    rot = np.array([[0.9, -0.3, 0.1], [0.3, 0.95, 0.0], [0.0, 0.05, 1.0]])
    src[:3, :3] = rot @ np.diag([1.6, 1.6, 2.5])
    src[:3, 3] = [-10.0, 5.0, 3.0]
    dst[:3, :3] = np.diag([-0.8, -0.9, 1.5])
    dst[:3, 3] = [12.0, 20.0, -1.0]
    if spatial_dims == 2:
        src[:3, 2], src[2, :3], dst[:3, 2], dst[2, :3] = 0, 0, 0, 0
        src[2, 2] = dst[2, 2] = 1
    return src, dst


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resample_slabwise_equals_monai_spatial_resample(spatial_dims, mode):
    torch.manual_seed(0)
    src_shape, dst_shape = (20, 22, 18)[:spatial_dims], (40, 37, 30)[:spatial_dims]
    values = torch.rand(3, *src_shape)
    src_affine, dst_affine = _affines(spatial_dims)
    expected = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float64)(
        MetaTensor(values, affine=torch.as_tensor(src_affine)),
        dst_affine=torch.as_tensor(dst_affine),
        spatial_size=dst_shape,
    ).as_tensor()
    outputs = [
        resample_slabwise(values, src_affine, dst_shape, dst_affine, mode=mode, slab_voxels=n)
        for n in (1, 700, 10**9)  # one slice per slab, a few slices, everything at once
    ]
    for out in outputs:
        assert out.shape == (3, *dst_shape) and out.dtype == torch.float32
        close = (out - expected.float()).abs() <= 1e-5
        # nearest: a coordinate on an exact half voxel may round either way between float32 and float64
        assert bool(close.all()) if mode == "bilinear" else float(close.float().mean()) > 0.999
    assert all(torch.equal(out, outputs[0]) for out in outputs)


def test_reduce_is_applied_per_slab_and_sets_the_dtype():
    values = torch.rand(3, 10, 11, 12)
    labels = resample_slabwise(values, np.eye(4), (10, 11, 12), np.eye(4), reduce=argmax_labels, slab_voxels=100)
    assert labels.dtype == torch.uint8 and labels.shape == (1, 10, 11, 12)
    assert torch.equal(labels, values.argmax(0, keepdim=True).to(torch.uint8))  # identity grid: exact


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="spatial axes"):
        resample_slabwise(torch.rand(5, 6, 7), np.eye(4), (5, 6, 7), np.eye(4))
    with pytest.raises(ValueError, match="mode"):
        resample_slabwise(torch.rand(1, 5, 6, 7), np.eye(4), (5, 6, 7), np.eye(4), mode="cubic")
