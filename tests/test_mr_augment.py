"""MR artefact augmentation: images change, labels never do, seeds reproduce, z-scored input stays finite."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged
from monai.utils import set_determinism

from transforms.augment.mr import mr_artifact_augmentation

SHAPE = (1, 24, 22, 16)
AFFINE = torch.tensor(
    [[0.0, -1.5, 0, 10], [2.0, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]], dtype=torch.float64
)
ALL_ON = {
    "bias_field_prob": 1.0,
    "motion_prob": 1.0,
    "ghosting_prob": 1.0,
    "spike_prob": 1.0,
    "gamma_prob": 1.0,
}
ONE_AT_A_TIME = [{name: (1.0 if name == on else 0.0) for name in ALL_ON} for on in ALL_ON]


def _sample(seed: int = 0, channels: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    body = torch.zeros(channels, *SHAPE[1:])
    body[:, 4:20, 4:18, 3:13] = 1.0
    image = body * 300.0 + 20.0 * torch.randn(channels, *SHAPE[1:], generator=g)
    image = (image - image.mean()) / image.std()  # z-scored: negatives in the background
    label = MetaTensor(body[:1].clone(), affine=AFFINE.clone(), meta={"filename_or_obj": "label.nii.gz"})
    return {
        "image": MetaTensor(image.float(), affine=AFFINE.clone(), meta={"filename_or_obj": "image.nii.gz"}),
        "label": label,
    }


def _run(sample: dict, seed: int, **kwargs) -> dict:
    set_determinism(seed)
    try:
        return mr_artifact_augmentation(["image"], ["label"], **kwargs)(dict(sample))
    finally:
        set_determinism(None)


@pytest.mark.parametrize("probs", [ALL_ON, *ONE_AT_A_TIME], ids=["all", *ALL_ON])
def test_images_change_labels_do_not(probs):
    sample = _sample()
    label_before = sample["label"].clone()
    for seed in range(4):  # every draw changes the image (TorchIO reads num_spikes=1 as 0 or 1 spikes)
        out = _run(sample, seed, **probs)
        assert not torch.allclose(out["image"], sample["image"]), f"seed {seed}"
        assert torch.isfinite(out["image"]).all()
        assert out["label"].dtype == label_before.dtype and torch.equal(out["label"], label_before)
        assert torch.equal(out["label"].affine, AFFINE)
        assert out["label"].meta["filename_or_obj"] == "label.nii.gz"


@pytest.mark.parametrize("probs", [ALL_ON, *ONE_AT_A_TIME], ids=["all", *ALL_ON])
@pytest.mark.parametrize("channels", [1, 2])
def test_shape_affine_meta_and_dtype_are_kept(probs, channels):
    sample = _sample(channels=channels)
    out = _run(sample, 1, **probs)
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert image.shape == (channels, *SHAPE[1:])
    assert torch.equal(image.affine, AFFINE) and image.meta["filename_or_obj"] == "image.nii.gz"


def test_numpy_input_is_accepted():
    sample = {"image": _sample()["image"].numpy()}
    out = mr_artifact_augmentation("image", **ALL_ON)(sample)["image"]  # a tensor, as MONAI's gamma returns
    assert out.dtype == torch.float32 and out.shape == SHAPE and torch.isfinite(out).all()


def test_zscored_input_stays_finite_over_many_draws():
    sample = _sample()
    for seed in range(8):
        out = _run(sample, seed, **ALL_ON, log_gamma=0.7)
        assert torch.isfinite(out["image"]).all(), f"seed {seed}"


def test_gamma_keeps_the_mean_and_std_of_zscored_input():
    sample = _sample()
    out = _run(sample, 3, **ONE_AT_A_TIME[-1])
    image, source = out["image"], sample["image"]
    assert not torch.allclose(image, source)
    assert image.mean().item() == pytest.approx(source.mean().item(), abs=1e-4)
    assert image.std().item() == pytest.approx(source.std().item(), rel=1e-4)


def test_same_seed_same_output_other_seed_other_output():
    sample = _sample()
    first, again, other = (_run(sample, seed, **ALL_ON)["image"] for seed in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_default_probabilities_leave_most_samples_alone():
    sample = _sample()
    unchanged = sum(torch.equal(_run(sample, seed)["image"], sample["image"]) for seed in range(6))
    assert unchanged >= 1  # about 0.85 * 0.9 ** 3 = 0.56 of samples pass through untouched


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keys": ["image", "label"], "label_keys": ["label"]}, "must not overlap"),
        ({"keys": []}, "at least one image key"),
        ({"spatial_dims": 2}, "spatial_dims must be 3"),
        ({"motion_prob": 1.5}, "motion_prob"),
        ({"gamma_prob": -0.1}, "gamma_prob"),
        ({"bias_coefficients": -0.1}, "bias_coefficients"),
        ({"motion_degrees": float("nan")}, "motion_degrees"),
        ({"motion_transforms": 0}, "motion_transforms"),
        ({"num_ghosts": (6, 2)}, "num_ghosts"),
        ({"ghosting_intensity": (-0.1, 0.2)}, "ghosting_intensity"),
        ({"spike_intensity": (0.3, 0.1)}, "spike_intensity"),
        ({"log_gamma": -1}, "log_gamma"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    kwargs = {"keys": ["image"], **kwargs}
    with pytest.raises(ValueError, match=match):
        mr_artifact_augmentation(**kwargs)


def test_a_2d_tensor_is_refused_naming_the_key():
    sample = {"image": torch.zeros(1, 24, 22), "label": torch.zeros(1, 24, 22)}
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose wraps the transform's error
        mr_artifact_augmentation("image", **ALL_ON)(sample)
    assert isinstance(raised.value.__cause__, ValueError)
    assert "'image' must be a (C, X, Y, Z) volume, got shape (1, 24, 22)" in str(raised.value.__cause__)


@pytest.mark.realdata
def test_hippocampus_mr_case(shared_data):
    image_file = shared_data / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    label_file = shared_data / "hippocampus" / "labelsTr" / "hippocampus_001.nii.gz"
    if not image_file.exists() or not label_file.exists():
        pytest.skip(f"hippocampus case absent under {shared_data}")
    data = LoadImaged(["image", "label"], ensure_channel_first=True)(
        {"image": image_file, "label": label_file}
    )
    data["image"] = (data["image"] - data["image"].mean()) / data["image"].std()
    out = _run(data, 0, **ALL_ON)
    assert out["image"].shape == data["image"].shape and torch.isfinite(out["image"]).all()
    assert not torch.allclose(out["image"], data["image"])
    assert torch.equal(out["image"].affine, data["image"].affine)
    assert np.array_equal(np.asarray(nib.load(label_file).dataobj), out["label"][0].numpy())


def test_torchio_gets_a_compact_plain_tensor_of_a_cropped_view(monkeypatch):
    """A crop is a view of the cached scan; TorchIO deep-copies what it gets, so it must get the patch alone."""
    from monai.transforms import RandTorchIOd

    from transforms.augment.mr import RandTorchIOMetad

    seen = []
    monkeypatch.setattr(RandTorchIOd, "__call__", lambda self, data: seen.append(data["image"]) or dict(data))
    scan = MetaTensor(torch.randn(2, 40, 40, 30), affine=AFFINE.clone())
    patch = scan[:, 5:21, 5:21, 4:12]
    assert not patch.is_contiguous()
    out = RandTorchIOMetad(["image"], "RandomSpike", p=1.0)({"image": patch})
    (given,) = seen
    assert type(given) is torch.Tensor and given.is_contiguous() and given.untyped_storage().size() == given.nbytes
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, patch.affine)
