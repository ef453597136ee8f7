"""The low-memory inference steps give the results of their whole-volume versions.

Slab-by-slab resampling onto the network grid (MONAI's ``Spacingd`` as reference, the same operation recorded),
Fortran-order sources, the images as read kept int16 where exact, in-place activation and temperature, the
mirrored member's labels from its logits, and the uncertainty summary computed slab by slab.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Orientationd, Spacingd

from pipeline.inference.case import LoadedCase, compact_image
from pipeline.inference.tta import activate
from pipeline.inference.uncertainty import member_labels, summarize_members, temperature_scaled
from transforms.geometry import spacing
from transforms.geometry.slab_resample import argmax_labels, resample_slabwise

torch.set_num_threads(1)


def _lps_scan(shape=(46, 40, 21), seed=0) -> MetaTensor:
    """A smooth LPS scan (Fortran order, as nibabel reads a NIfTI) with an offset origin."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    values = np.asfortranarray((np.sin(grid[0]) * np.cos(grid[1]) + grid[2] + rng.normal(0, 0.01, shape)) * 300)
    affine = np.diag([-0.8, -0.9, 1.5, 1.0])
    affine[:3, 3] = (60.0, 40.0, -20.0)
    return MetaTensor(torch.from_numpy(values.astype(np.float32))[None], affine=torch.as_tensor(affine))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_slabwise_spacing_equals_monai_spacing_and_records_the_same_operation(monkeypatch, mode):
    oriented = Orientationd("image", axcodes="RAS", labels=None)({"image": _lps_scan()})
    monai = Spacingd("image", pixdim=(1.6, 1.7, 2.5), mode=mode, dtype=torch.float32)(dict(oriented))["image"]
    monkeypatch.setattr(spacing, "SLAB_MIN_VOXELS", 1)
    stable = spacing.StableSpacingd("image", pixdim=(1.6, 1.7, 2.5), mode=mode, dtype=torch.float32)
    slabwise = stable(dict(oriented))["image"]
    assert slabwise.shape == monai.shape and slabwise.dtype == torch.float32
    np.testing.assert_allclose(slabwise.affine.numpy(), monai.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(slabwise.numpy(), monai.numpy(), atol=2e-3 * float(monai.abs().max()))
    assert [op["class"] for op in slabwise.applied_operations] == [op["class"] for op in monai.applied_operations]
    inverted = stable.inverse({"image": slabwise})["image"]
    assert inverted.shape == oriented["image"].shape
    np.testing.assert_allclose(inverted.affine.numpy(), oriented["image"].affine.numpy(), atol=1e-6)


def test_small_or_float64_resampling_stays_on_monai(monkeypatch):
    calls = []
    monkeypatch.setattr(spacing.StableSpacing, "_resample_slabwise", lambda *a: calls.append(a))
    image = Orientationd("image", axcodes="RAS", labels=None)({"image": _lps_scan()})
    spacing.StableSpacingd("image", pixdim=2.0, dtype=torch.float32)(dict(image))  # under SLAB_MIN_VOXELS
    monkeypatch.setattr(spacing, "SLAB_MIN_VOXELS", 1)
    spacing.StableSpacingd("image", pixdim=2.0, dtype=np.float64)(dict(image))  # training's dtype
    spacing.StableSpacingd("image", pixdim=2.0, dtype=torch.float32, padding_mode="zeros")(dict(image))
    assert calls == []


@pytest.mark.parametrize("reduce", [None, argmax_labels])
def test_a_fortran_order_source_resamples_like_a_contiguous_one(reduce):
    source = torch.rand(3, 30, 26, 17, dtype=torch.float32)
    fortran = source.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1)
    assert not fortran.is_contiguous() and torch.equal(fortran, source)
    src_affine, dst_affine = np.diag([1.6, 1.6, 2.5, 1.0]), np.diag([0.8, 0.9, 1.2, 1.0])
    kwargs = {"reduce": reduce, "slab_voxels": 500}
    expected = resample_slabwise(source, src_affine, (57, 44, 33), dst_affine, **kwargs)
    got = resample_slabwise(fortran, src_affine, (57, 44, 33), dst_affine, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # the axes interpolated in another order


@pytest.mark.parametrize(
    "values, kept",
    [(torch.tensor([-1024.0, 0.0, 3071.0]), True), (torch.tensor([-1024.0, 0.5, 10.0]), False),
     (torch.tensor([0.0, 40000.0, 1.0]), False)],
)  # fmt: skip
def test_images_as_read_are_stored_int16_only_when_exact(values, kept):
    image = MetaTensor(values.repeat(8, 5, 1).reshape(1, 8, 5, 3), affine=torch.diag(torch.tensor([0.8, 0.8, 1.5, 1.0])))
    image.meta["filename_or_obj"] = "ct.nii.gz"
    stored = compact_image(image)
    assert stored.dtype == (torch.int16 if kept else torch.float32)
    case = LoadedCase({}, {"image": stored}, ("image",))
    restored = case.inputs["image"]
    assert restored.dtype == torch.float32 and torch.equal(restored.as_tensor(), image.as_tensor())
    assert torch.equal(restored.affine, image.affine) and restored.meta["filename_or_obj"] == "ct.nii.gz"
    assert case.inputs["image"] is restored  # expanded once


def test_compaction_keeps_a_fortran_layout():
    image = _lps_scan().round()
    stored = compact_image(image)
    assert stored.dtype == torch.int16 and stored.stride() == image.stride()


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_in_place_activation_and_temperature_equal_their_out_of_place_forms(activation):
    logits = torch.randn(2, 3, 9, 8, 5) * 4
    expected = torch.softmax(logits, 1) if activation == "softmax" else torch.sigmoid(logits)
    probs = activate(logits.clone(), activation)
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    copy = probs[0].clone()
    scaled = temperature_scaled(probs[0], 1.7, activation)
    torch.testing.assert_close(probs[0], copy, rtol=0, atol=0)  # not in place unless asked
    torch.testing.assert_close(temperature_scaled(copy, 1.7, activation, inplace=True), scaled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_member_labels_from_logits_equal_those_from_probabilities(activation):
    logits = torch.randn(3, 70, 130, 120)  # over one slab of the argmax
    probs = torch.softmax(logits, 0) if activation == "softmax" else torch.sigmoid(logits)
    assert torch.equal(member_labels(logits, activation, logits=True), member_labels(probs, activation))
    if activation == "softmax":
        assert torch.equal(member_labels(probs), probs.argmax(0).to(torch.uint8))


def _summary_whole_grid(members, probs):
    """The summary's definition on whole grids (softmax): mean pairwise Dice per structure, mean normalised entropy
    inside each predicted structure and inside the foreground."""
    labels = probs.argmax(0)
    p = probs.clamp(1e-6, 1.0)
    entropy = -(p * p.log()).sum(0) / math.log(probs.shape[0])
    agreement, per_structure = {}, {}
    for k in range(1, probs.shape[0]):
        dice = [2.0 * float(((a == k) & (b == k)).sum()) / float((a == k).sum() + (b == k).sum())
                for a, b in itertools.combinations(members, 2)]  # fmt: skip
        agreement[k], per_structure[k] = sum(dice) / len(dice), float(entropy[labels == k].double().mean())
    return agreement, per_structure, float(entropy[labels > 0].double().mean())


def test_slabwise_uncertainty_summary_equals_its_whole_grid_definition():
    torch.manual_seed(0)
    logits = torch.randn(3, 60, 140, 130) * 2
    logits[1, :30] += 3  # structure 1 in the first half, over several slabs
    probs = torch.softmax(logits, 0)
    members = [member_labels(torch.softmax(logits + torch.randn_like(logits), 0)) for _ in range(3)]
    summary = summarize_members(members, probs)
    agreement, entropy, foreground = _summary_whole_grid(members, probs)
    assert summary.members == 3
    for k in (1, 2):
        assert summary.agreement[k] == pytest.approx(agreement[k], rel=1e-9)
        assert summary.entropy[k] == pytest.approx(entropy[k], rel=1e-5)
    assert summary.foreground_entropy == pytest.approx(foreground, rel=1e-5)


def test_the_body_box_is_found_without_expanding_the_int16_images_as_read():
    from pipeline.inference.foreground_crop import case_box
    from pipeline.inference.options import InferenceOptions

    read = _lps_scan().round()
    network = MetaTensor(torch.zeros(1, 46, 40, 21), affine=read.affine.clone())
    options = InferenceOptions(roi_size=(8, 8, 8), overlap=0.25, crop_foreground=True, foreground_hu=800.0, crop_margin=0)
    expected = case_box(LoadedCase({"image": network}, {"image": read}, ("image",)), options)
    case = LoadedCase({"image": network}, {"image": compact_image(read)}, ("image",))
    assert expected is not None and case_box(case, options) == expected
    assert case.read["image"].dtype == torch.int16  # still compact while the network runs
