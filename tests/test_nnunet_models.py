"""nnU-Net v2 trained-model folders through clinseg (``clinseg predict nnunet:PATH``) against ``nnUNetv2_predict``;
``clinseg evaluate nnunet:PATH`` against scoring the predicted masks; ``Predictor.from_bundle("nnunet:...")``;
flat folders of channel files.

A tiny model folder is planned by nnU-Net itself on synthetic phantoms and given seeded random weights
(:mod:`pipeline.synthetic.nnunet_model`); no training. Needs the ``nnunet`` extra.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from pipeline.cli import main
from pipeline.inference.nnunet_folder import open_model_folder
from pipeline.inference.nnunet_predictor import NnunetPredictor
from pipeline.inference.options import InferenceOptions
from pipeline.synthetic.nnunet_model import build_model_folder, nnunet_env
from pipeline.synthetic.phantoms import make_phantom, write_case
from transforms.io.nifti_write import write_nifti

SHAPE = (40, 36, 16)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Trained-model folder with folds 0 and 1 (random weights)."""
    torch.set_num_threads(1)
    return build_model_folder(tmp_path_factory.mktemp("nnunet"), folds=(0, 1), shape=SHAPE)


def _flip(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with ``axis`` reversed."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, array.shape[axis] - 1
    return np.flip(array, axis).copy(), affine @ flip


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Flat NIfTI folder: an oblique RAS-stored phantom and one stored slices-first with x reversed (LAS-like),
    another shape and spacing, so nnU-Net resamples and the storage order matters."""
    folder = tmp_path_factory.mktemp("nnunet_images")
    first = make_phantom(40, shape=SHAPE, spacing=(1.5, 1.5, 3.0), oblique=True)
    write_nifti(first.ct.astype(np.int16), first.affine, folder / "case_a_0000.nii.gz")
    second = make_phantom(41, shape=(36, 32, 12), spacing=(1.8, 1.6, 3.5), oblique=True)
    array, affine = _flip(second.ct.astype(np.int16), second.affine, 0)
    array, affine = array.transpose(2, 0, 1), affine[:, [2, 0, 1, 3]]
    write_nifti(np.ascontiguousarray(array), affine, folder / "case_b_0000.nii.gz")
    return folder


@pytest.fixture(scope="module")
def reference(model, images, tmp_path_factory) -> Path:
    """``nnUNetv2_predict_from_modelfolder -f 0 -chk checkpoint_final.pth --disable_tta`` on ``images``."""
    tool = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    if not tool.exists():
        pytest.skip(f"{tool.name} is not installed next to {sys.executable}")
    out = tmp_path_factory.mktemp("nnunet_reference")
    env = nnunet_env(tmp_path_factory.mktemp("nnunet_env"))
    cmd = [str(tool), "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0", "-chk", "checkpoint_final.pth",
           "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return out


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.slow
def test_predict_matches_nnunetv2_predict_on_the_input_grid(model, images, reference, tmp_path):
    out = tmp_path / "out"
    rc = main(["predict", f"nnunet:{model}", "--input", str(images), "--output", str(out), "--folds", "0",
               "--device", "cpu", "--quiet"])  # fmt: skip
    assert rc == 0
    for case in ("case_a", "case_b"):
        source = nib.load(images / f"{case}_0000.nii.gz")
        seg = nib.load(out / case / "seg.nii.gz")
        assert seg.shape == source.shape
        np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
        ours, theirs = _labels(out / case / "seg.nii.gz"), _labels(reference / f"{case}.nii.gz")
        assert set(np.unique(theirs)) == {0, 1, 2}, "the random network should predict every label"
        assert (ours == theirs).mean() >= 0.999, case
    run = json.loads((out / "report.json").read_text())["run"]
    assert run["labels"] == {"1": "organ", "2": "lesion"}
    assert run["folds"] == ["0"]


@pytest.mark.slow
def test_dicom_input_writes_seg_with_dataset_json_label_names(model, tmp_path):
    patients = tmp_path / "patients"
    phantom = make_phantom(42, shape=SHAPE, spacing=(1.5, 1.5, 3.0))
    write_case(phantom, patients / "p1", formats=("dicom",), uid_seed="nnunet")
    for stale in ("mr.nii.gz", "label.nii.gz"):
        (patients / "p1" / stale).unlink()
    out = tmp_path / "out"
    rc = main(["predict", f"nnunet:{model}", "--input", str(patients), "--output", str(out), "--folds", "0",
               "--device", "cpu", "--quiet"])  # fmt: skip
    assert rc == 0
    seg = pydicom.dcmread(out / "p1" / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    assert nib.load(out / "p1" / "seg.nii.gz").shape == SHAPE


def test_folds_default_to_those_with_the_checkpoint_and_can_be_chosen(model):
    assert open_model_folder(f"nnunet:{model}").folds == (0, 1)
    assert open_model_folder(model, ["1"]).folds == (1,)
    predictor = NnunetPredictor.from_folder(f"nnunet:{model}", [0])
    assert predictor.settings()["folds"] == ["0"]
    assert predictor.label_names == {1: "organ", 2: "lesion"}
    assert predictor.input_keys == ("image",) and predictor.input_modalities == {"image": "CT"}


def test_bad_folders_folds_and_checkpoints_are_named(model, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="plans.json is missing"):
        open_model_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="fold 3 is missing"):
        open_model_folder(model, [3])
    with pytest.raises(FileNotFoundError, match=r"checkpoint_best.pth: no such checkpoint .*checkpoint_final.pth"):
        open_model_folder(model, [0], "checkpoint_best.pth")
    caplog.set_level(logging.ERROR)
    rc = main(["predict", f"nnunet:{model}", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
               "--checkpoint-name", "checkpoint_best.pth"])  # fmt: skip
    assert rc == 2 and "checkpoint_best.pth: no such checkpoint (fold_0/: checkpoint_final.pth;" in caplog.text


def test_predict_image_returns_the_kind_it_was_given(model, images, reference):
    predictor = NnunetPredictor.from_folder(model, [0])
    source = nib.load(images / "case_b_0000.nii.gz")
    seg = predictor.predict_image(nib.Nifti1Image(np.asarray(source.dataobj), source.affine))
    assert isinstance(seg, nib.Nifti1Image) and seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-4)
    assert (np.asarray(seg.dataobj) == _labels(reference / "case_b.nii.gz")).mean() >= 0.999


def test_probabilities_come_back_on_the_input_grid(model, images):
    predictor = NnunetPredictor.from_folder(model, [0])
    result = predictor.predict(images / "case_b_0000.nii.gz", keep_probabilities=True)
    probs, labels = result.probabilities, result.labels
    assert probs.shape == (3, *labels.shape[1:]) and predictor.activation == "softmax"
    np.testing.assert_allclose(probs.affine, labels.affine)
    assert (probs.argmax(0) == labels[0]).float().mean() >= 0.999


def test_channel_count_mismatch_names_dataset_json_channels(model, tmp_path):
    predictor = NnunetPredictor.from_folder(model, [0])
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\) \['CT'\]"):
        predictor.load({"t2": tmp_path / "t2.nii.gz"})


def test_region_models_name_labels_by_regions_class_order(tmp_path):
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_final.pth").touch()
    (tmp_path / "plans.json").write_text("{}")
    dataset = {"channel_names": {"0": "T1", "1": "T2"}, "regions_class_order": [1, 2, 3],
               "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": [3]}}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    folder = open_model_folder(tmp_path)
    assert folder.label_names == {1: "whole tumor", 2: "tumor core", 3: "enhancing"}
    assert folder.channel_names == ["T1", "T2"]


def test_serve_builds_the_nnunet_predictor(model, tmp_path):
    from pipeline.cli import build_parser
    from pipeline.cli.common import check_arguments
    from pipeline.cli.inference_flags import predictor

    args = build_parser().parse_args(["serve", f"nnunet:{model}", "--spool", str(tmp_path / "spool"), "--output",
                                      str(tmp_path / "out"), "--folds", "1", "--device", "cpu"])  # fmt: skip
    check_arguments(args)
    built = predictor(args)
    assert isinstance(built, NnunetPredictor) and built.folder.folds == (1,)
    args = build_parser().parse_args(["predict", f"nnunet:{model}", "--input", str(tmp_path), "--output",
                                      str(tmp_path / "o"), "--roi-size", "8", "8", "8", "--device", "cpu"])  # fmt: skip
    with pytest.raises(ValueError, match="--roi-size .* not supported for nnU-Net models"):
        predictor(args)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Datalist with a ``test`` split of two phantoms (CT and label on one grid, one oblique)."""
    folder = tmp_path_factory.mktemp("nnunet_labelled")
    entries = []
    for case, seed, oblique in (("p1", 43, True), ("p2", 44, False)):
        phantom = make_phantom(seed, shape=SHAPE, spacing=(1.5, 1.5, 3.0), oblique=oblique)
        write_nifti(phantom.ct.astype(np.int16), phantom.affine, folder / f"{case}_ct.nii.gz")
        write_nifti(phantom.label, phantom.affine, folder / f"{case}_label.nii.gz")
        entries.append({"case": case, "image": f"{case}_ct.nii.gz", "label": f"{case}_label.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({"test": entries}))
    return folder / "dataset.json"


@pytest.mark.slow
def test_evaluate_scores_exactly_the_masks_predict_writes_and_logs_a_run(model, labelled, tmp_path):
    import mlflow

    from pipeline.evaluation.evaluate import case_metrics, voxel_spacing
    from transforms.io.scan import load_scan

    out = tmp_path / "pred"
    assert main(["predict", f"nnunet:{model}", "--input", str(labelled), "--output", str(out), "--folds", "0",
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["evaluate", f"nnunet:{model}", "--datalist", str(labelled), "--split", "test", "--nnunet-folds", "0",
               "--device", "cpu", "--quiet", "--output", str(tmp_path / "eval"), "--tracking-uri", uri])  # fmt: skip
    assert rc == 0
    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        table = {(r["case"], r["name"]): r for r in csv.DictReader(f)}
    assert set(table) == {(c, n) for c in ("p1", "p2") for n in ("organ", "lesion")}
    assert {"qc_score", "qc_review", "hd95_mm"} <= set(table["p1", "organ"])
    for case in ("p1", "p2"):
        pred = load_scan(out / case / "seg.nii.gz", label=True)
        label = load_scan(labelled.parent / f"{case}_label.nii.gz", label=True)
        spacing = voxel_spacing(label.affine, 3)
        for row in case_metrics(pred, label, spacing, {1: "organ", 2: "lesion"}):
            assert float(table[case, row["name"]]["dice"]) == pytest.approx(row["dice"], abs=1e-6), (case, row)
    (run,) = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()]
    )
    assert run.data.params["folds"] == "0" and run.data.params["split"] == "test"
    assert run.data.tags["clinseg.run_type"] == "evaluation" and "eval_dice_organ" in run.data.metrics


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "an nnU-Net model names no datalist; give --datalist or --dataset-dir"),
        (["--datalist", "DATALIST", "--folds", "5", "--checkpoint-pattern", "f{fold}.pt"],
         "out-of-fold pooling.* are for bundles"),
        (["--datalist", "DATALIST", "--set", "a=1"], "--set not supported for nnU-Net models"),
    ],
)
def test_evaluate_nnunet_refuses_what_it_cannot_do(model, labelled, extra, message, caplog):
    caplog.set_level(logging.ERROR)
    args = [str(labelled) if a == "DATALIST" else a for a in extra]
    assert main(["evaluate", f"nnunet:{model}", "--no-tracking", "--device", "cpu", *args]) == 2
    assert re.search(message, caplog.text), caplog.text


def test_predictor_from_bundle_forwards_nnunet_folders(model):
    from pipeline.inference.predictor import Predictor

    built = Predictor.from_bundle(f"nnunet:{model}", folds=[1], options=InferenceOptions(device="cpu"))
    assert isinstance(built, NnunetPredictor) and built.folder.folds == (1,)
    assert built.folder.checkpoint_name == "checkpoint_final.pth"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"checkpoints": "model.pt"}, "checkpoints"), ({"spacing": [1, 1, 1]}, "spacing"),
     ({"config": ["inference", "x"]}, "config")],
)  # fmt: skip
def test_predictor_from_bundle_refuses_bundle_arguments_for_nnunet(model, kwargs, message):
    from pipeline.inference.predictor import Predictor

    with pytest.raises(ValueError, match=f"{message} not supported for nnU-Net models"):
        Predictor.from_bundle(f"nnunet:{model}", **kwargs)


@pytest.mark.slow
def test_flat_folder_channel_files_make_one_case_and_a_missing_channel_fails_it(tmp_path):
    model = build_model_folder(tmp_path / "model", cases=2, shape=SHAPE, channels=("CT", "T2"))
    predictor = NnunetPredictor.from_folder(model, options=InferenceOptions(device="cpu"))
    assert predictor.input_keys == ("ct", "t2")
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    phantom = make_phantom(45, shape=SHAPE, spacing=(1.5, 1.5, 3.0))
    for name, offset in (("p1_0000", 0), ("p1_0001", 100), ("p2_0000", 0)):
        write_nifti((phantom.ct + offset).astype(np.int16), phantom.affine, folder / f"{name}.nii.gz")
    out = tmp_path / "out"
    rc = main(["predict", f"nnunet:{model}", "--input", str(folder), "--output", str(out), "--device", "cpu",
               "--quiet"])  # fmt: skip
    assert rc == 3
    cases = {c["case"]: c for c in json.loads((out / "report.json").read_text())["cases"]}
    assert cases["p1"]["status"] == "ok" and nib.load(out / "p1" / "seg.nii.gz").shape == SHAPE
    assert cases["p2"]["status"] == "failed" and r"p2_0001.nii.gz (t2) missing" in cases["p2"]["error"]


def test_evaluate_checkpoint_points_nnunet_folders_to_evaluate_predictor(model, labelled):
    from pipeline.evaluation.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="evaluated by evaluate_predictor"):
        evaluate_checkpoint(f"nnunet:{model}", [], labelled, "test")


class _NotData:
    """A pickled object of this class is code to run, not data: an nnU-Net checkpoint holding one is refused."""


def test_a_checkpoint_holding_more_than_data_is_refused_before_nnunet_unpickles_it(model, tmp_path):
    copy = tmp_path / model.name
    shutil.copytree(model, copy)
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "logging": _NotData()}, checkpoint)
    with pytest.raises(ValueError, match=rf"nnU-Net checkpoint {re.escape(str(checkpoint))}: holds more than .*_NotData"):
        NnunetPredictor.from_folder(copy, [0])
    assert NnunetPredictor.from_folder(copy, [1]).settings()["folds"] == ["1"]  # numpy scalars in its logs are data


@pytest.mark.slow
def test_random_model_folder_takes_a_configuration_of_chosen_size_and_patch(tmp_path):
    from pipeline.synthetic.nnunet_model import random_model_folder, write_raw_dataset

    env = nnunet_env(tmp_path)
    raw = write_raw_dataset(Path(env["nnUNet_raw"]), 903, "Sized", cases=2, shape=SHAPE)
    sized = {"patch_size": [16, 32, 32], "architecture": {"arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1] * 3, "n_conv_per_stage_decoder": [1] * 2,
    }}}  # fmt: skip
    model = random_model_folder(raw, env, configuration=sized)
    config = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32] and config["architecture"]["arch_kwargs"]["n_stages"] == 3
    assert config["architecture"]["arch_kwargs"]["conv_op"]  # entries not given are kept
    weights = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    first = next(v for k, v in weights.items() if k.endswith("weight") and v.ndim == 5)
    assert first.shape[0] == 4  # the network was built from the merged plans
    predictor = NnunetPredictor.from_folder(model, folds=[0])
    assert predictor.folder.path == model
