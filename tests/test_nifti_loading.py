"""transforms.io.nifti and the NIfTI side of transforms.io.scan (LoadScan / LoadScand)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from transforms.io.scan import LoadScan, LoadScand, ScanLoadError, load_scan

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 2.5, -5.0], [0, 0, 0, 1]])


def _save(path, data, affine=AFFINE, **header):
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_matches_monai_load_image(tmp_path, dtype, suffix):
    data = np.random.default_rng(0).integers(0, 200, (33, 34, 35)).astype(dtype)
    path = _save(tmp_path / f"img{suffix}", data)
    ours = load_scan(path)
    ref = Compose([LoadImaged("img", image_only=True), EnsureChannelFirstd("img")])({"img": str(path)})["img"]
    assert ours.dtype == torch.float32 and ours.shape == ref.shape == (1, 33, 34, 35)
    np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy())
    for key in ("filename_or_obj", "space"):
        assert ours.meta[key] == ref.meta[key]
    np.testing.assert_array_equal(ours.meta["spatial_shape"], ref.meta["spatial_shape"])
    np.testing.assert_allclose(ours.meta["original_affine"], ref.meta["original_affine"])


def test_scaled_and_big_endian_data(tmp_path):
    data = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_slope_inter(2.0, -3.0)
    nib.save(img, tmp_path / "s.nii.gz")
    np.testing.assert_allclose(load_scan(tmp_path / "s.nii.gz").numpy()[0], data * 2.0 - 3.0)


def test_qform_used_when_sform_unset(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    img.set_qform(AFFINE, code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "q.nii.gz")
    np.testing.assert_allclose(load_scan(tmp_path / "q.nii.gz").affine.numpy(), AFFINE, atol=1e-5)


def test_labels_stay_exact_integers(tmp_path):
    data = np.random.default_rng(0).integers(0, 118, (33, 34, 35)).astype(np.uint8)
    labels = load_scan(_save(tmp_path / "l.nii.gz", data), label=True)
    assert labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels.numpy()[0], data)
    floats = load_scan(_save(tmp_path / "f.nii.gz", data.astype(np.float32)), label=True)
    assert floats.dtype == torch.int32
    with pytest.raises(ScanLoadError, match="integer values"):
        load_scan(_save(tmp_path / "h.nii.gz", data + np.float32(0.5)), label=True)


def test_4d_needs_channel_axis(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7, 2)).astype(np.float32)
    path = _save(tmp_path / "4d.nii.gz", data)
    with pytest.raises(ScanLoadError, match=r"4d\.nii\.gz: 4D image of shape \(5, 6, 7, 2\).*channel_axis"):
        load_scan(path)
    image = load_scan(path, channel_axis=3)
    assert image.shape == (2, 5, 6, 7) and image.meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(image.numpy()[1], data[..., 1])
    squeezed = load_scan(_save(tmp_path / "t1.nii.gz", data[..., :1]))
    assert squeezed.shape == (1, 5, 6, 7)


@pytest.mark.parametrize("shape", [(9, 8), (9, 8, 1)])
def test_2d_files(tmp_path, shape):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    path = _save(tmp_path / "2d.nii.gz", data)
    image = load_scan(path, spatial_dims=2)
    assert image.shape == (1, 9, 8)
    np.testing.assert_array_equal(image.numpy()[0], data.reshape(9, 8))
    if len(shape) == 3:
        assert load_scan(path).shape == (1, 9, 8, 1)  # a one-slice volume
    else:
        with pytest.raises(
            ScanLoadError, match=r"2d\.nii\.gz: 2D image of shape \(9, 8\) given to a 3D loader.*2D bundle"
        ):
            load_scan(path)


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda p: _save(p, np.zeros((3, 4, 5), np.float32) + np.nan), {}, r"non-finite voxels \(60 NaN\)"),
        (
            lambda p: _save(p, np.zeros((3, 4, 5), np.float32)),
            {"spatial_dims": 2},
            "spatial_dims=2 needs a 2D image",
        ),
        (
            lambda p: _save(p, np.zeros((3, 4, 5), np.float32)),
            {"channel_axis": 0},
            "channel_axis=0 given but the image is 3D",
        ),
        (lambda p: p.write_bytes(b"not a nifti"), {}, "cannot read as NIfTI"),
    ],
)
def test_bad_nifti_errors_name_file(tmp_path, make, kwargs, match):
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(ScanLoadError, match=match) as info:
        load_scan(path, **kwargs)
    assert "bad.nii.gz" in str(info.value) or "spatial_dims" in str(info.value)


def test_dict_transform_keys_labels_meta_and_missing(tmp_path):
    image = _save(tmp_path / "ct.nii.gz", np.full((3, 4, 5), -1000, np.int16))
    label = _save(tmp_path / "label.nii.gz", np.ones((3, 4, 5), np.uint8))
    out = LoadScand(["image", "label"], label_keys="label", image_only=False)(
        {"image": image, "label": label, "x": 1}
    )
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8 and out["x"] == 1
    assert out["label_meta_dict"]["filename_or_obj"] == str(label)
    with pytest.raises(KeyError, match="label"):
        LoadScand(["image", "label"])({"image": image})
    assert "label" not in LoadScand(["image", "label"], allow_missing_keys=True)({"image": image})
    with pytest.raises(ValueError, match="label_keys"):
        LoadScand(["image"], label_keys=["seg"])
    with pytest.raises(ValueError, match="spatial_dims"):
        LoadScan(spatial_dims=4)


def test_bundle_config_instantiates(tmp_path):
    from monai.bundle import ConfigParser

    path = _save(tmp_path / "ct.nii.gz", np.zeros((3, 4, 5), np.int16))
    parser = ConfigParser(
        {
            "load": {
                "_target_": "transforms.io.scan.LoadScand",
                "keys": ["image"],
                "series_rule": {"modality": "CT"},
            }
        }
    )
    assert parser.get_parsed_content("load")({"image": str(path)})["image"].shape == (1, 3, 4, 5)
