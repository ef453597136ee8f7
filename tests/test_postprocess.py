"""Post-processing on small synthetic masks: islands, largest component, holes, mL thresholds, types kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.inference.postprocess import postprocess_mask

SHAPE = (33, 34, 35)


def _scene() -> np.ndarray:
    """Label 1: a 10x10x10 blob with a 2x2x2 enclosed hole, plus a 2x2x2 island (8 voxels).
    Label 2: a 6x6x6 blob plus a 4x4x4 island (64 voxels); a single voxel of label 3."""
    m = np.zeros(SHAPE, np.uint8)
    m[2:12, 2:12, 2:12] = 1
    m[6:8, 6:8, 6:8] = 0  # hole
    m[20:22, 2:4, 2:4] = 1  # island
    m[20:26, 20:26, 20:26] = 2
    m[2:6, 25:29, 25:29] = 2
    m[30, 30, 30] = 3
    return m


def test_remove_small_objects_voxels_per_label():
    m = _scene()
    out = postprocess_mask(m, min_size={1: 9})
    assert (out[20:22, 2:4, 2:4] == 0).all()  # 8-voxel island of label 1 removed
    assert (out[2:6, 25:29, 25:29] == 2).all() and out[30, 30, 30] == 3  # other labels untouched
    assert int((out == 1).sum()) == 1000 - 8


def test_min_size_int_applies_to_every_label():
    out = postprocess_mask(_scene(), min_size=10)
    assert (out == 3).sum() == 0 and (out[20:22, 2:4, 2:4] == 0).all()
    assert (out[2:6, 25:29, 25:29] == 2).all()  # 64 voxels survive


def test_min_size_ml_uses_voxel_volume():
    m = _scene()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 uL per voxel: 64-voxel island = 0.512 mL
    assert (postprocess_mask(m, min_size_ml={2: 0.6}, affine=aff)[2:6, 25:29, 25:29] == 0).all()
    assert (postprocess_mask(m, min_size_ml={2: 0.5}, affine=aff)[2:6, 25:29, 25:29] == 2).all()
    meta = MetaTensor(torch.as_tensor(m)[None], affine=torch.as_tensor(aff))
    out = postprocess_mask(meta, min_size_ml=0.6)
    assert isinstance(out, MetaTensor) and out.shape == (1, *SHAPE)
    assert int((out == 2).sum()) == 216 and int((out == 1).sum()) == 992
    with pytest.raises(ValueError, match="required unless"):
        postprocess_mask(m, min_size_ml=0.6)


def test_keep_largest_per_label():
    m = _scene()
    out = postprocess_mask(m, keep_largest=[2])
    assert (out[2:6, 25:29, 25:29] == 0).all() and int((out == 2).sum()) == 216
    assert (out[20:22, 2:4, 2:4] == 1).all()  # label 1 not asked for: island kept


def test_connectivity_changes_components():
    m = np.zeros((9, 9, 9), np.uint8)
    m[1:4, 1:4, 1:4] = 1
    m[4, 4, 4] = 1  # touches the blob only at a corner
    assert postprocess_mask(m, keep_largest=[1])[4, 4, 4] == 1  # full connectivity: one component
    assert postprocess_mask(m, keep_largest=[1], connectivity=1)[4, 4, 4] == 0


def test_fill_holes_only_for_named_labels():
    m = _scene()
    assert (postprocess_mask(m, fill_holes=[2])[6:8, 6:8, 6:8] == 0).all()
    out = postprocess_mask(m, fill_holes=[1])
    assert (out[6:8, 6:8, 6:8] == 1).all() and int((out == 1).sum()) == 1008


@pytest.mark.parametrize("kind", ["numpy", "torch", "channel_first", "float_metatensor"])
def test_type_shape_dtype_preserved_and_input_untouched(kind):
    m = _scene()
    given = {
        "numpy": m.copy(),
        "torch": torch.as_tensor(m.astype(np.int64)),
        "channel_first": m[None].copy(),
        "float_metatensor": MetaTensor(torch.as_tensor(m, dtype=torch.float32)[None]),  # AsDiscrete output
    }[kind]
    before = given.clone() if isinstance(given, torch.Tensor) else given.copy()
    out = postprocess_mask(given, keep_largest=[1, 2], min_size=2, fill_holes=[1])
    assert type(out) is type(given) and out.shape == given.shape and out.dtype == given.dtype
    assert (given == before).all()
    spatial = np.asarray(out).reshape(SHAPE)
    assert (
        int((spatial == 1).sum()) == 1000 and int((spatial == 2).sum()) == 216 and (spatial == 3).sum() == 0
    )


def test_2d_mask():
    m = np.zeros((20, 21), np.uint8)
    m[2:10, 2:10] = 1
    m[15, 15] = 1
    assert postprocess_mask(m, keep_largest=[1]).sum() == 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_size": {0: 5}}, "positive label ids"),
        ({"min_size": -1}, "sizes >= 0"),
        ({"connectivity": 4}, r"connectivity must be in 1..3"),
    ],
)
def test_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        postprocess_mask(_scene(), **kwargs)


def test_float_mask_rejected():
    with pytest.raises(ValueError, match="integer labels"):
        postprocess_mask(np.full((4, 4, 4), 1.5, np.float32))
