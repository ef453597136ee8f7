"""CLAHE: agreement with skimage's equalize_adapthist, input checks, transform classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import gaussian_filter

import transforms.intensity.clahe_numba as clahe_numba
from transforms.intensity.clahe import clahe
from transforms.intensity.transforms import CLAHE, CLAHEd, RandCLAHEd

skimage_exposure = pytest.importorskip("skimage.exposure")

TOL = 0.02
BACKENDS = ["torch"] + (["numba"] if clahe_numba.available() else [])


def _image(shape: tuple[int, ...], seed: int = 0, smooth: bool = True) -> np.ndarray:
    """Float32 test image in [0, 1]: smoothed noise squared (skewed histogram), or plain noise."""
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    if smooth:
        a = gaussian_filter(a, 2.0)
        a = ((a - a.min()) / (a.max() - a.min())) ** 2
    return a.astype(np.float32)


def _reference(x: np.ndarray, **kw) -> np.ndarray:
    return np.stack([skimage_exposure.equalize_adapthist(c, **kw) for c in x])


CASES = [
    ((1, 97, 61), None, 0.01, 256),
    ((1, 97, 61), (16, 12), 0.03, 256),
    ((2, 64, 64), 8, 0.01, 128),
    ((2, 64, 64), None, 0.03, 256),
    ((1, 33, 34, 35), None, 0.01, 256),
    ((1, 33, 34, 35), 8, 0.03, 128),
    ((1, 33, 34, 35), (16, 12, 7), 0.01, 256),
    ((1, 20, 30), 40, 0.01, 256),  # tile larger than the image
]


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("shape, kernel_size, clip_limit, nbins", CASES)
def test_matches_skimage(shape, kernel_size, clip_limit, nbins, smooth):
    x = _image(shape, smooth=smooth)
    ref = _reference(x, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    for backend in BACKENDS:
        out = clahe(torch.from_numpy(x), kernel_size, clip_limit, nbins, backend=backend)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert np.abs(out.numpy() - ref).max() <= TOL, backend
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("kernel_size", [None, 8])
def test_slicewise_matches_skimage_per_slice(kernel_size):
    x = _image((2, 40, 37, 6), seed=1)
    ref = np.stack(
        [
            np.stack([skimage_exposure.equalize_adapthist(c[..., z], kernel_size, 0.02) for z in range(6)], -1)
            for c in x
        ]
    )
    for backend in BACKENDS:
        out = clahe(torch.from_numpy(x), kernel_size, 0.02, 256, slicewise=True, backend=backend)
        assert out.shape == x.shape
        assert np.abs(out.numpy() - ref).max() <= TOL, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_clipping_and_constant_image(backend):
    x = _image((1, 40, 30), seed=2)
    ref = _reference(x, clip_limit=0.0)
    assert np.abs(clahe(torch.from_numpy(x), clip_limit=0.0, backend=backend).numpy() - ref).max() <= TOL
    for value in (0.3, 1.0):
        const = torch.full((1, 16, 16), value)
        ref = _reference(const.numpy())
        assert np.abs(clahe(const, backend=backend).numpy() - ref).max() <= TOL


def test_backends_agree_on_odd_volume():
    x = torch.from_numpy(_image((2, 33, 34, 35), seed=7))
    outs = [clahe(x, (9, 7, 5), 0.02, 64, backend=b) for b in BACKENDS]
    for out in outs[1:]:
        assert float((out - outs[0]).abs().max()) <= 1e-3


def test_backend_choice_is_checked(monkeypatch):
    x = torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match="did you mean 'numba'"):
        clahe(x, backend="numbaa")
    monkeypatch.setattr(clahe_numba, "available", lambda: False)
    with pytest.raises(ValueError, match="backend='numba' needs numba"):
        clahe(x, backend="numba")
    assert clahe(x).shape == x.shape  # auto falls back to torch


def test_enhances_local_contrast():
    x = torch.from_numpy(_image((1, 64, 64), seed=3)) * 0.2 + 0.4  # low-contrast image
    out = clahe(x)
    assert float(out.std()) > 2 * float(x.std())


@pytest.mark.parametrize(
    "x, kwargs, err, match",
    [
        (torch.full((1, 8, 8), 1.5), {}, ValueError, r"\[0, 1\]"),
        (torch.full((1, 8, 8), -0.1), {}, ValueError, r"\[0, 1\]"),
        (torch.rand(8, 8), {}, ValueError, r"\(C, H, W\)"),
        (torch.rand(1, 2, 8, 8, 8), {}, ValueError, r"\(C, H, W\)"),
        (torch.rand(1, 8, 8), {"slicewise": True}, ValueError, "slicewise"),
        (torch.randint(0, 2, (1, 8, 8)), {}, TypeError, "floating point"),
        (torch.rand(1, 8, 8), {"kernel_size": (4, 4, 4)}, ValueError, "kernel_size"),
        (torch.rand(1, 8, 8), {"kernel_size": 0}, ValueError, "kernel_size"),
        (torch.rand(1, 8, 8), {"clip_limit": -0.1}, ValueError, "clip_limit"),
        (torch.rand(1, 8, 8), {"nbins": 1}, ValueError, "nbins"),
    ],
)
def test_rejects_bad_input(x, kwargs, err, match):
    with pytest.raises(err, match=match):
        clahe(x, **kwargs)


def test_transform_numpy_and_metatensor():
    x = _image((1, 33, 34, 35), seed=4)
    ref = clahe(torch.from_numpy(x), 8)
    out_np = CLAHE(kernel_size=8)(x)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, ref.numpy())
    affine = torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(x), affine=affine, meta={"space": "RAS"})
    out = CLAHEd("image", kernel_size=8)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.meta["space"] == "RAS"
    torch.testing.assert_close(out.affine, affine)
    torch.testing.assert_close(out.as_tensor(), ref)


def test_transform_rejects_bad_params_up_front():
    with pytest.raises(ValueError, match="clip_limit"):
        CLAHE(clip_limit=-1)
    with pytest.raises(ValueError, match="kernel_size"):
        CLAHEd("image", kernel_size=(8, -1))
    with pytest.raises(ValueError, match="clip_limit_range"):
        RandCLAHEd("image", clip_limit_range=(0.03, 0.01))
    with pytest.raises(ValueError, match="kernel_size_range"):
        RandCLAHEd("image", kernel_size_range=(0, 4))


def test_dict_missing_key():
    with pytest.raises(KeyError, match="mr"):
        CLAHEd(["ct", "mr"])({"ct": torch.rand(1, 8, 8)})


def test_rand_clahe_same_draw_for_all_keys_and_seeded():
    x = torch.from_numpy(_image((1, 40, 36), seed=5))
    t = RandCLAHEd(["a", "b"], prob=1.0, clip_limit_range=(0.005, 0.05), kernel_size_range=(4, 12))
    t.set_random_state(11)
    out = t({"a": x, "b": x.clone()})
    torch.testing.assert_close(out["a"], out["b"])
    eq = t.equalizer
    torch.testing.assert_close(out["a"], clahe(x, eq.kernel_size, eq.clip_limit))
    assert 0.005 <= eq.clip_limit <= 0.05 and 4 <= eq.kernel_size <= 12
    t.set_random_state(11)
    torch.testing.assert_close(t({"a": x, "b": x})["b"], out["a"])


def test_rand_clahe_prob_zero_passes_through():
    x = torch.from_numpy(_image((1, 20, 20), seed=6))
    out = RandCLAHEd("a", prob=0.0)({"a": x})["a"]
    torch.testing.assert_close(out, x)
