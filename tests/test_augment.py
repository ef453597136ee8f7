"""Augmentation presets: labels follow images, label values stay in the label set, shapes, inversion, YAML."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from transforms.augment.presets import (
    elastic_preset,
    intensity_augmentation,
    spatial_augmentation,
    standard_augmentation,
)

SHAPES = {2: (41, 38), 3: (26, 25, 24)}
STRUCTURES = {1: 0.3, 3: 0.9}  # label value -> image intensity


def _phantom(spatial_dims: int) -> dict[str, MetaTensor]:
    """Two balls (labels 1 and 3, intensities 0.3 and 0.9) on a zero background, with a RAS affine in mm."""
    shape = SHAPES[spatial_dims]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    centres = {1: [s * 0.3 for s in shape], 3: [s * 0.65 for s in shape]}
    label = torch.zeros(shape)
    for value, centre in centres.items():
        dist = torch.sqrt(sum((grid[a] - c) ** 2 for a, c in enumerate(centre)))
        label[dist < min(shape) * 0.22] = value
    image = torch.zeros(shape)
    for value, intensity in STRUCTURES.items():
        image[label == value] = intensity
    affine = torch.eye(4, dtype=torch.float64)
    for axis, spacing_mm in enumerate([0.8, 0.9, 2.5][:spatial_dims]):
        affine[axis, axis] = spacing_mm
    return {
        "image": MetaTensor(image[None], affine=affine.clone()),
        "label": MetaTensor(label[None], affine=affine.clone()),
    }


def _assert_label_follows_image(out: dict, before: dict) -> None:
    assert out["image"].shape == before["image"].shape and out["label"].shape == before["label"].shape
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0, 3.0}
    assert not torch.equal(out["label"].as_tensor(), before["label"].as_tensor()), "nothing was deformed"
    assert not torch.equal(out["image"].as_tensor(), before["image"].as_tensor())
    for value, intensity in STRUCTURES.items():
        inside = out["label"][0] == value
        assert int(inside.sum()) > 0.5 * int((before["label"][0] == value).sum())
        # interior voxels keep the structure's intensity; only the one-voxel rim mixes with the background
        values = out["image"][0][inside]
        assert abs(float(values.median()) - intensity) < 0.01
        assert abs(float(values.mean()) - intensity) < 0.15


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_elastic_label_follows_image(spatial_dims):
    data = _phantom(spatial_dims)
    kw = {"magnitude_range": (3.0, 4.0), "spacing": 10.0}
    if spatial_dims == 3:
        kw = {"magnitude_range": (300.0, 400.0)}
    t = elastic_preset("image", spatial_dims, "label", prob=1.0, **kw)
    t.set_random_state(1)
    _assert_label_follows_image(t(dict(data)), data)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_elastic_chooses_class_and_modes(spatial_dims):
    t = elastic_preset(["ct", "mr"], spatial_dims, ["label"])
    assert type(t).__name__ == f"Rand{spatial_dims}DElasticd"
    assert tuple(t.mode) == ("bilinear", "bilinear", "nearest")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spatial_label_follows_image(spatial_dims):
    data = _phantom(spatial_dims)
    t = standard_augmentation("image", spatial_dims, "label", flip_prob=1, affine_prob=1, intensity_prob=0)
    t.set_random_state(2)
    _assert_label_follows_image(t(dict(data)), data)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_intensity_changes_images_only(spatial_dims):
    data = _phantom(spatial_dims)
    t = standard_augmentation("image", spatial_dims, "label", flip_prob=0, affine_prob=0, intensity_prob=1)
    t.set_random_state(3)
    out = t(dict(data))
    torch.testing.assert_close(out["label"].as_tensor(), data["label"].as_tensor())
    assert not torch.allclose(out["image"].as_tensor(), data["image"].as_tensor())
    assert out["image"].shape == data["image"].shape


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_standard_augmentation_inverts(spatial_dims):
    data = _phantom(spatial_dims)
    t = standard_augmentation("image", spatial_dims, "label", flip_prob=1, affine_prob=1, intensity_prob=1)
    t.set_random_state(4)
    out = t(dict(data))
    assert len(out["label"].applied_operations) == spatial_dims + 1  # one flip per axis, then the affine
    inv = t.inverse(out)
    for key in ("image", "label"):
        assert inv[key].shape == data[key].shape
        torch.testing.assert_close(inv[key].affine, data[key].affine, atol=1e-5, rtol=0)
        assert inv[key].applied_operations == []
    overlap = ((inv["label"] == 3) & (data["label"] == 3)).sum() / (data["label"] == 3).sum()
    assert float(overlap) > 0.8  # nearest-neighbour resampling twice loses only the rim


def test_seeded_runs_repeat():
    data = _phantom(2)
    t = standard_augmentation("image", 2, "label", affine_prob=1.0, intensity_prob=0.5)
    a = t.set_random_state(5)(dict(data))
    b = t.set_random_state(5)(dict(data))
    torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
    torch.testing.assert_close(a["label"].as_tensor(), b["label"].as_tensor())


def test_usable_from_bundle_config():
    config = {
        "aug": {
            "_target_": "transforms.augment.presets.standard_augmentation",
            "keys": ["image"],
            "label_keys": ["label"],
            "spatial_dims": 3,
            "rotate_deg": 10.0,
        }
    }
    aug = ConfigParser(config).get_parsed_content("aug")
    assert isinstance(aug, Compose)
    out = aug(_phantom(3))
    assert out["image"].shape == (1, *SHAPES[3])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: elastic_preset("image", 4), "spatial_dims"),
        (lambda: elastic_preset((), 2), "at least one"),
        (lambda: elastic_preset("image", 2, "image"), "overlap"),
        (lambda: elastic_preset("image", 2, prob=1.5), "prob"),
        (lambda: spatial_augmentation("image", 2, flip_axes=[2]), "flip_axes"),
        (lambda: spatial_augmentation("image", 3, scale=1.0), "scale"),
        (lambda: intensity_augmentation("image", gamma=(0.0, 1.0)), "gamma"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
