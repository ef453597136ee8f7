"""CT windowing: values, presets, channel stacking, numpy/torch/MetaTensor, dict and random variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms.intensity.ct_window import CT_WINDOW_PRESETS, resolve_windows
from transforms.intensity.transforms import CTWindow, CTWindowd, RandCTWindowd


def _hu(shape=(1, 33, 34, 35)) -> torch.Tensor:
    return torch.linspace(-1200, 2000, int(np.prod(shape))).reshape(shape)


def test_level_40_width_400_maps_edges_and_clips():
    x = torch.tensor([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]])
    out = CTWindow(level=40, width=400)(x)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]]))


def test_no_clip_and_output_range():
    x = torch.tensor([[[-360.0, 40.0, 440.0]]])
    out = CTWindow(level=40, width=400, out_min=-1.0, out_max=1.0, clip=False)(x)
    torch.testing.assert_close(out, torch.tensor([[[-2.0, 0.0, 2.0]]]))


@pytest.mark.parametrize("name", sorted(CT_WINDOW_PRESETS))
def test_presets_map_window_edges(name):
    level, width = CT_WINDOW_PRESETS[name]
    x = torch.tensor([[[level - width / 2, level, level + width / 2]]])
    torch.testing.assert_close(CTWindow(preset=name)(x), torch.tensor([[[0.0, 0.5, 1.0]]]))


def test_preset_values_are_the_documented_ones():
    assert CT_WINDOW_PRESETS["brain"] == (40.0, 80.0)
    assert CT_WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert CT_WINDOW_PRESETS["abdomen"] == (50.0, 400.0)


def test_unknown_preset_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'brain'"):
        CTWindow(preset="brian")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"level": 40}, "together"),
        ({"level": 40, "width": 0}, "width must be > 0"),
        ({"level": 40, "width": 400, "preset": "lung"}, "exactly one"),
        ({"windows": []}, "at least one"),
        ({"windows": [(1, 2, 3)]}, r"windows\[0\]"),
        ({"level": 40, "width": 80, "out_min": 1, "out_max": 1}, "must differ"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTWindow(**kwargs)


@pytest.mark.parametrize("shape", [(1, 33, 34), (1, 33, 34, 35)])
def test_multi_window_stacks_channels(shape):
    x = _hu(shape)
    out = CTWindow(preset=["brain", "lung", "bone"])(x)
    assert out.shape == (3, *shape[1:])
    for c, name in enumerate(["brain", "lung", "bone"]):
        torch.testing.assert_close(out[c : c + 1], CTWindow(preset=name)(x))


def test_windows_argument_matches_preset_list():
    x = _hu((1, 9, 10))
    a = CTWindow(windows=[(40, 80), (-600, 1500)])(x)
    b = CTWindow(preset=("brain", "lung"))(x)
    torch.testing.assert_close(a, b)


def test_single_window_applies_per_channel():
    x = _hu((2, 9, 10, 11))
    out = CTWindow(preset="brain")(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[1:], CTWindow(preset="brain")(x[1:]))


def test_multi_window_on_multichannel_rejected():
    with pytest.raises(ValueError, match="single-channel"):
        CTWindow(preset=["brain", "lung"])(_hu((2, 9, 10)))


def test_numpy_input_returns_numpy_float32():
    x = np.array([[[-160, 40, 240]]], dtype=np.int16)
    out = CTWindow(level=40, width=400)(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[[0.0, 0.5, 1.0]]])


def test_integer_tensor_becomes_float32():
    out = CTWindow(level=40, width=400)(torch.tensor([[[-160, 240]]], dtype=torch.int16))
    assert out.dtype == torch.float32


def test_metatensor_keeps_meta_and_affine():
    affine = torch.diag(torch.tensor([-0.7, -0.7, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(_hu(), affine=affine, meta={"space": "RAS", "filename_or_obj": "ct.nii.gz"})
    out = CTWindowd("image", preset=["brain", "lung"])({"image": img})["image"]
    assert isinstance(out, MetaTensor)
    assert out.shape == (2, 33, 34, 35)
    torch.testing.assert_close(out.affine, affine)
    assert out.meta["space"] == "RAS" and out.meta["filename_or_obj"] == "ct.nii.gz"


def test_device_is_kept():
    x = _hu((1, 5, 6)).to("meta")
    assert CTWindow(preset="lung")(x).device.type == "meta"


def test_dict_missing_key_raises_and_allow_missing():
    with pytest.raises(KeyError, match="label"):
        CTWindowd(["image", "label"], preset="brain")({"image": _hu((1, 4, 4))})
    out = CTWindowd(["image", "label"], preset="brain", allow_missing_keys=True)({"image": _hu((1, 4, 4))})
    assert set(out) == {"image"}


def test_resolve_windows_returns_pairs():
    assert resolve_windows(preset=["brain", "bone"]) == ((40.0, 80.0), (400.0, 1800.0))


def test_rand_window_same_draw_for_all_keys():
    x = _hu((1, 9, 10, 11))
    t = RandCTWindowd(["a", "b"], prob=1.0, level_jitter=50, width_jitter=0.3, preset="abdomen")
    t.set_random_state(3)
    out = t({"a": x, "b": x.clone()})
    torch.testing.assert_close(out["a"], out["b"])
    (level, width), = t.current_windows
    assert (level, width) != CT_WINDOW_PRESETS["abdomen"]
    assert abs(level - 50) <= 50 and 0.7 * 400 <= width <= 1.3 * 400
    torch.testing.assert_close(out["a"], CTWindow(level=level, width=width)(x))


def test_rand_window_deterministic_with_seed():
    x = _hu((1, 9, 10))
    t = RandCTWindowd("a", prob=0.5, level_jitter=30, width_jitter=0.2, preset=["brain", "lung"])
    t.set_random_state(7)
    first = [t({"a": x})["a"] for _ in range(5)]
    t.set_random_state(7)
    second = [t({"a": x})["a"] for _ in range(5)]
    assert any(not torch.equal(first[0], f) for f in first[1:])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_rand_window_prob_zero_is_base_window():
    x = _hu((1, 9, 10))
    out = RandCTWindowd("a", prob=0.0, level_jitter=30, preset="brain")({"a": x})["a"]
    torch.testing.assert_close(out, CTWindow(preset="brain")(x))


@pytest.mark.parametrize(
    "kwargs, match", [({"level_jitter": -1}, "level_jitter"), ({"width_jitter": 1.0}, "width_jitter")]
)
def test_rand_window_invalid_jitter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandCTWindowd("a", preset="brain", **kwargs)
