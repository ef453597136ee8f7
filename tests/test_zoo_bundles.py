"""MONAI model-zoo bundles (real configs in tests/zoo_bundles, seeded random weights) through the batch runner:
masks on each input's grid (NIfTI and DICOM), label names from metadata.json in the outputs and the report."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.outputs.registry import SEG_NAME, VOLUMES_NAME
from pipeline.batch.runner import predict_folder
from pipeline.cli import main
from pipeline.core.bundle import Bundle, BundleError
from pipeline.core.checkpoint import CheckpointError
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.predictor import Predictor
from pipeline.inference.zoo_bundle import ZooBundle, is_zoo_layout, open_bundle
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.conftest import BUNDLES
from transforms.io.scan import load_scan

torch.set_num_threads(1)

ZOO = Path(__file__).parent / "zoo_bundles"


@dataclass(frozen=True)
class ZooCase:
    name: str
    modality: str
    labels: dict[int, str]
    spacing: float  # input voxel size (mm): the network grid stays small at the bundle's own spacing


CASES = [
    ZooCase("spleen_ct_segmentation", "CT", {1: "spleen"}, 4.0),
    ZooCase("prostate_mri_anatomy", "MR", {1: "central gland", 2: "peripheral zone"}, 2.0),
]
ROI = (32, 32, 32)


def _zoo_copy(case: ZooCase, folder: Path, weights: str = "model.pt") -> Path:
    """The bundle's files plus seeded random weights of its ``network_def`` (state_dict or TorchScript)."""
    root = folder / case.name
    shutil.copytree(ZOO / case.name, root)
    torch.manual_seed(7)
    net = Bundle.at(root).parser().get_parsed_content("network_def").eval()
    (root / "models").mkdir()
    if weights == "model.ts":
        torch.jit.trace(net, torch.zeros(1, 1, *ROI)).save(str(root / "models" / weights))
    else:
        torch.save(net.state_dict(), root / "models" / weights)
    return root


def _image(case: ZooCase, seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Integer intensities: CT in HU with air (no modality warning), MR positive."""
    rng = np.random.default_rng(seed)
    low, high = (-1000, 400) if case.modality == "CT" else (0, 800)
    return rng.integers(low, high, size=shape).astype(np.int16)


def _affines(spacing: float) -> list[np.ndarray]:
    """An axial RAS grid, and one with permuted, flipped and anisotropic axes."""
    s = spacing
    return [
        np.diag([s, s, 1.5 * s, 1.0]),
        np.array([[0, -s, 0, 20.0], [1.2 * s, 0, 0, -8.0], [0, 0, -1.5 * s, 5.0], [0, 0, 0, 1]]),
    ]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def zoo(request, tmp_path_factory):
    case = request.param
    folder = tmp_path_factory.mktemp("zoo")
    root = _zoo_copy(case, folder)
    src = folder / "patients"
    for i, affine in enumerate(_affines(case.spacing)):
        (src / f"case_{i}").mkdir(parents=True)
        nib.save(nib.Nifti1Image(_image(case, i, (9, 8, 7)), affine), src / f"case_{i}" / "image.nii.gz")
    write_dicom_series(
        _image(case, 9, (8, 9, 6)), np.diag([case.spacing, case.spacing, 1.5 * case.spacing, 1.0]),
        src / "case_dicom", modality=case.modality, uid_seed=case.name,
    )  # fmt: skip
    predictor = Predictor.from_bundle(root, options=InferenceOptions(roi_size=ROI, device="cpu", amp=False))
    out = folder / "out"
    report = predict_folder(predictor, src, out)
    return case, root, src, out, report, predictor


def test_the_zoo_bundle_resolves_to_a_predictor_with_its_metadata(zoo):
    case, root, _, _, _, predictor = zoo
    assert isinstance(open_bundle(root), ZooBundle)
    assert predictor.label_names == case.labels
    assert predictor.input_modalities == {"image": case.modality}
    assert predictor.options.roi_size == ROI


def test_every_case_gives_a_mask_on_its_input_grid(zoo):
    case, _, src, out, report, _ = zoo
    assert report.counts() == {"ok": 3, "failed": 0, "skipped": 0}, [r.error for r in report.results]
    for name, path in [("case_0", "case_0/image.nii.gz"), ("case_1", "case_1/image.nii.gz"), ("case_dicom", "case_dicom")]:
        loaded = load_scan(src / path)
        seg = nib.load(out / name / SEG_NAME)
        assert seg.shape == tuple(loaded.shape[1:])
        np.testing.assert_allclose(seg.affine, loaded.affine.numpy(), atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, *case.labels}


def test_label_names_from_metadata_reach_volumes_and_report(zoo):
    case, _, _, out, _, _ = zoo
    volumes = json.loads((out / "case_0" / VOLUMES_NAME).read_text())
    assert {r["name"] for r in volumes} == set(case.labels.values())
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["labels"] == {str(k): v for k, v in case.labels.items()}
    html = (out / "report.html").read_text()
    assert all(name in html for name in case.labels.values())


def test_clinseg_flags_apply_to_a_zoo_bundle_and_restore_is_the_bundles(zoo, caplog):
    from scipy import ndimage

    caplog.set_level(logging.INFO, logger="pipeline.inference.zoo_restore")
    case, root, src, _, _, _ = zoo
    labels = sorted(case.labels)
    options = InferenceOptions(roi_size=ROI, device="cpu", amp=False, tta=True)
    predictor = Predictor.from_bundle(root, options=options, postprocess=PostprocessOptions(keep_largest=labels))
    mask = predictor.predict(src / "case_1" / "image.nii.gz").labels.numpy()[0]
    assert predictor.settings()["tta"] and predictor.postprocess.active
    assert all(ndimage.label(mask == v, structure=np.ones((3, 3, 3)))[1] <= 1 for v in labels)
    assert "not on the input grid" not in caplog.text  # the bundle's own Invertd brought it back
    with pytest.raises(ValueError, match="restore needs a RestoreToInputd step"):
        Predictor.from_bundle(root, options=InferenceOptions(roi_size=ROI, device="cpu", restore="nearest"))


@pytest.mark.parametrize("bundle", ["ct_organ_resunet3d", "ct_lesion_denseunet2d"])
def test_clinseg_bundles_are_not_taken_for_zoo_bundles(bundle):
    assert not is_zoo_layout(BUNDLES / bundle)
    assert type(open_bundle(BUNDLES / bundle)) is Bundle


def test_a_zoo_bundle_with_yaml_configs_resolves(tmp_path):
    import yaml

    case = CASES[1]
    root = _zoo_copy(case, tmp_path)
    config = root / "configs" / "inference.json"
    (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config.read_text())))
    config.unlink()
    predictor = Predictor.from_bundle(root, options=InferenceOptions(roi_size=ROI, device="cpu"))
    assert isinstance(open_bundle(root), ZooBundle)
    assert predictor.label_names == case.labels


def test_torchscript_weights_give_the_masks_of_the_state_dict(tmp_path):
    case = CASES[0]
    image = nib.Nifti1Image(_image(case, 3, (9, 8, 7)), _affines(case.spacing)[1])
    options = InferenceOptions(roi_size=ROI, device="cpu", amp=False)
    masks = []
    for weights in ("model.pt", "model.ts"):
        root = _zoo_copy(case, tmp_path / weights, weights)
        masks.append(np.asarray(Predictor.from_bundle(root, options=options).predict_image(image).dataobj))
    np.testing.assert_array_equal(masks[0], masks[1])


@pytest.mark.parametrize(
    "change, error, match",
    [
        ("no_weights", BundleError, "neither models/model.pt nor models/model.ts"),
        ("other_loader", BundleError, r"inference.json: preprocessing must start with LoadImaged"),
        ("wrong_weights", CheckpointError, "does not fit the bundle's network_def"),
        ("no_channel_def", BundleError, "metadata.json: no network_data_format.outputs.pred.channel_def"),
        ("sigmoid", BundleError, "inference.json: its postprocessing applies a sigmoid"),
    ],
)
def test_bad_zoo_bundles_are_refused_naming_the_file(tmp_path, change, error, match):
    case = CASES[0]
    root = _zoo_copy(case, tmp_path)
    overrides = {}
    if change == "no_weights":
        (root / "models" / "model.pt").unlink()
    elif change == "other_loader":
        overrides["preprocessing#transforms#0"] = {"_target_": "EnsureTyped", "keys": "image"}
    elif change == "sigmoid":
        overrides["postprocessing#transforms#0"] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
    elif change == "wrong_weights":
        torch.save({"conv.weight": torch.zeros(1)}, root / "models" / "model.pt")
    else:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        del meta["network_data_format"]["outputs"]
        (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=match):
        Predictor.from_bundle(root, options=InferenceOptions(roi_size=ROI, device="cpu"), **overrides)


@pytest.mark.slow
def test_clinseg_predict_runs_a_zoo_bundle_folder(zoo, tmp_path):
    case, root, src, _, _, _ = zoo
    out = tmp_path / "out"
    argv = ["predict", str(root), "--input", str(src), "--output", str(out), "--roi-size", "32", "32", "32",
            "--device", "cpu", "--no-amp", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["counts"]["ok"] == 3


def _network_image(input_affine: np.ndarray, shape: tuple[int, ...]):
    """A preprocessed image on a 2x finer grid whose meta names the input grid (as LoadScand + Spacingd leave it)."""
    from monai.data import MetaTensor

    fine = input_affine.copy()
    fine[:3, :3] /= 2
    meta = {"spatial_shape": np.array(shape), "original_affine": input_affine, "affine": torch.as_tensor(fine)}
    return MetaTensor(torch.zeros(1, *[2 * n for n in shape]), meta=meta)


@pytest.mark.parametrize("on_input_grid", [True, False])
def test_zoo_grid_check_keeps_an_inverted_map_and_resamples_any_other(on_input_grid):
    from monai.data import MetaTensor

    from pipeline.inference.zoo_restore import ZooInputGridd

    affine, shape = _affines(2.0)[1], (5, 4, 3)
    image = _network_image(affine, shape)
    labels = torch.arange(60, dtype=torch.float32).reshape(1, *shape) % 3
    if on_input_grid:  # as the zoo's Invertd leaves it: input shape and affine
        pred = MetaTensor(labels + 0.2, affine=torch.as_tensor(affine))
    else:  # still on the network grid (no Invertd): each input voxel covers 2x2x2 network voxels
        fine = labels.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
        pred = MetaTensor(fine, affine=image.affine)
    out = ZooInputGridd("pred")({"image": image, "pred": pred})["pred"]
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, *shape)
    np.testing.assert_allclose(out.affine.numpy(), affine, atol=1e-4)
    torch.testing.assert_close(out.as_tensor(), labels.to(torch.uint8))
