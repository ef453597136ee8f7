"""In-memory inputs and outputs: LoadScand and the Predictor take MetaTensor, nibabel, SimpleITK and
(array, affine) images as a path load of the same scan, and give the labels back as the same kind on its grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from pipeline.core.bundle import Bundle
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.test_predictor import BUNDLE, random_checkpoint
from transforms.io.scan import LoadScand, ScanLoadError, load_scan

KINDS = ["nibabel", "SimpleITK", "MetaTensor", "MetaTensor_LPS", "numpy", "torch"]


def as_kind(path, kind: str):
    """The NIfTI at ``path`` loaded outside clinseg, as ``kind``."""
    img = nib.load(str(path))
    if kind == "nibabel":
        return img
    if kind == "SimpleITK":
        return sitk.ReadImage(str(path))
    if kind == "MetaTensor":
        return LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    if kind == "MetaTensor_LPS":  # ITK's convention (MONAI's ITKReader with affine_lps_to_ras=False)
        ras = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
        lps = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)) @ ras.affine
        return MetaTensor(ras.as_tensor(), meta={**ras.meta, "affine": lps, "space": "LPS"})
    array = np.asanyarray(img.dataobj)
    return (array if kind == "numpy" else torch.as_tensor(array)), img.affine


def labels_of(result, kind: str) -> np.ndarray:
    """``(X, Y, Z)`` label values of what ``predict_image`` returned for ``kind``."""
    if kind == "nibabel":
        return np.asarray(result.dataobj)
    if kind == "SimpleITK":
        return sitk.GetArrayFromImage(result).transpose()
    return np.asarray(result[0] if isinstance(result, MetaTensor) and result.ndim == 4 else result)


@pytest.fixture(scope="module")
def preprocessing():
    """The bundle's inference preprocessing, its LoadScand first."""
    return Bundle.at(BUNDLE).parser("inference").get_parsed_content("preprocessing")


@pytest.mark.parametrize("kind", KINDS)
def test_in_memory_preprocesses_like_the_path(shared_data, preprocessing, kind):
    path = shared_data / "totalseg" / "mr_sm.nii.gz"  # LPS on disk: orientation matters
    by_path = preprocessing({"image": str(path)})["image"]
    in_memory = preprocessing({"image": as_kind(path, kind)})["image"]
    assert in_memory.shape == by_path.shape
    np.testing.assert_allclose(in_memory.affine.numpy(), by_path.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(in_memory.numpy(), by_path.numpy(), atol=1e-3)
    for key in ("original_affine", "spatial_shape", "spacing"):
        np.testing.assert_allclose(np.asarray(in_memory.meta[key]), np.asarray(by_path.meta[key]), atol=1e-4)
    assert in_memory.meta["space"] == by_path.meta["space"]
    assert str(in_memory.meta["filename_or_obj"]).startswith("<in-memory")


def test_the_callers_image_is_left_as_it_was():
    array = np.zeros((6, 5, 4), dtype=np.float32)
    out = LoadScand("image")({"image": (array, np.eye(4))})["image"]
    out += 1
    assert not array.any()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((6, 5, 4)), r"input 'image': a plain ndarray has no geometry; pass \(array, affine\)"),
        (torch.zeros(6, 5, 4), r"input 'image': a plain Tensor has no geometry"),
        ({"array": np.zeros((6, 5, 4))}, r"input 'image': cannot load a dict"),
        ((np.full((6, 5, 4), np.nan), np.eye(4)), r"input 'image' \(array image\): .*non-finite voxels \(120 NaN\)"),
        ((np.zeros((6, 5, 4)), np.diag([1.0, 0.0, 1.0, 1.0])), r"input 'image' \(array image\): degenerate affine"),
        ((np.zeros((6, 5, 4)), np.eye(5)), r"affine must be a \(4, 4\)"),
        ((np.zeros((6, 5)), np.eye(4)), r"expected \(X, Y, Z\) or a channel-first"),
        (MetaTensor(torch.zeros(1, 6, 5, 4), affine=torch.diag(torch.tensor([1.0, 1.0, float("nan"), 1.0]))),
         r"input 'image' \(MetaTensor image\): degenerate affine"),
        (nib.Nifti1Image(np.full((6, 5, 4), np.inf, dtype=np.float32), np.eye(4)),
         r"input 'image' \(nibabel image\): .*non-finite voxels \(120 \+inf\)"),
        (sitk.Image([6, 5], sitk.sitkFloat32), r"input 'image' \(SimpleITK image\): .*3D single-channel"),
    ],
)  # fmt: skip
def test_bad_in_memory_inputs_name_the_key_and_the_problem(image, message):
    with pytest.raises(ScanLoadError, match=message):
        LoadScand("image")({"image": image})


def test_labels_stay_exact_integers_and_refuse_fractions():
    loader = LoadScand(["image", "label"], label_keys=["label"])
    labels = np.arange(120, dtype=np.float64).reshape(6, 5, 4) % 3
    out = loader({"image": (np.zeros((6, 5, 4)), np.eye(4)), "label": (labels, np.eye(4))})
    assert out["label"].dtype == torch.int32
    np.testing.assert_array_equal(out["label"][0].numpy(), labels)
    with pytest.raises(ScanLoadError, match=r"input 'label' \(array image\): label image must hold integer"):
        loader({"image": (np.zeros((6, 5, 4)), np.eye(4)), "label": (labels + 0.5, np.eye(4))})


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    checkpoint = random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
    options = InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    return Predictor.from_bundle(BUNDLE, checkpoint, options=options, spacing=[4.0, 4.0, 4.0])


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A small oblique CT-like NIfTI in LPS (body of soft tissue in air), written to disk."""
    rng = np.random.default_rng(0)
    ct = np.full((30, 26, 10), -1000.0, dtype=np.float32)
    ct[6:24, 5:21, 2:8] = 40.0 + rng.normal(0, 20, size=(18, 16, 6))
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([2.1, 2.3, 3.5])
    affine[:3, 3] = (30.0, -12.0, 40.0)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), str(path))
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_predict_image_returns_the_input_kind_on_its_grid(predictor, small_ct, kind):
    image = as_kind(small_ct, kind)
    result = predictor.predict_image(image)
    expected = predictor.predict(small_ct).labels[0].numpy()
    labels = labels_of(result, kind)
    assert labels.shape == expected.shape == (30, 26, 10)
    np.testing.assert_array_equal(labels, expected)
    if kind == "nibabel":
        assert isinstance(result, nib.Nifti1Image)
        np.testing.assert_array_equal(result.affine, image.affine)
    elif kind == "SimpleITK":
        assert isinstance(result, sitk.Image) and result.GetPixelID() == sitk.sitkUInt8
        assert result.GetOrigin() == image.GetOrigin() and result.GetSpacing() == image.GetSpacing()
        assert result.GetDirection() == image.GetDirection()
    elif kind.startswith("MetaTensor"):
        assert isinstance(result, MetaTensor) and result.shape == image.shape
        np.testing.assert_array_equal(result.affine.numpy(), image.affine.numpy())
        assert result.meta["space"] == image.meta["space"]
    else:
        array, _ = image
        assert type(result) is type(array) and result.dtype in (np.uint8, torch.uint8)


def test_predict_image_takes_one_image_per_input_key(predictor, small_ct):
    image = as_kind(small_ct, "nibabel")
    np.testing.assert_array_equal(
        labels_of(predictor.predict_image({"image": image}), "nibabel"),
        labels_of(predictor.predict_image(image), "nibabel"),
    )
    with pytest.raises(KeyError, match=r"case inputs lack \['image'\]"):
        predictor.predict_image({"ct": image})
    with pytest.raises(TypeError, match="predict_image takes in-memory images"):
        predictor.predict_image(small_ct)


@pytest.mark.slow
def test_monai_deploy_pattern_on_a_real_dicom_series(shared_data, predictor):
    """Loading outside (SimpleITK reads the DICOM series, as a MONAI Deploy operator does), the bundle's other
    transforms inside: the mask comes back on the series' own grid and equals the path-loaded prediction."""
    folder = shared_data / "dcmqi" / "ct_3slice"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    result = predictor.predict_image(series)
    assert result.GetSize() == series.GetSize() == (512, 512, 3)
    assert result.GetOrigin() == series.GetOrigin() and result.GetSpacing() == series.GetSpacing()
    assert result.GetDirection() == series.GetDirection()
    by_path = predictor.predict(folder).labels[0].numpy()
    assert by_path.shape == load_scan(folder).shape[1:]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result).transpose(), by_path)
