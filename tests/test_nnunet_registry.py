"""``clinseg register-model nnunet:PATH NAME``: an nnU-Net trained-model folder logged to MLflow (only the chosen
folds' checkpoint) and registered; ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` open it as an nnU-Net model in
predict, evaluate, serve and ``Predictor.from_bundle``, with the masks of ``nnunet:PATH``. Unsafe or incomplete
folders are refused before any MLflow run exists. A local SQLite registry; a tiny random-weight model folder
planned by nnU-Net (:mod:`pipeline.synthetic.nnunet_model`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import re
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.bundle import Bundle
from pipeline.inference.nnunet_predictor import NnunetPredictor
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.pacs.serve import StorageNode
from pipeline.synthetic.nnunet_model import TRAINER_FOLDER, build_model_folder
from pipeline.synthetic.phantoms import make_phantom
from transforms.io.nifti_write import write_nifti

SHAPE = (40, 36, 16)
NAME = "hippocampus-nnunet"
FAST = ["--device", "cpu", "--quiet", "--no-preview", "--no-dicom-seg"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Folds 0 and 1 as ``nnUNetv2_train`` leaves them: besides ``checkpoint_final.pth``, a ``checkpoint_best.pth``,
    a validation folder and a training log per fold, and ``dataset_fingerprint.json``."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nnunet")
    folder = build_model_folder(root, folds=(0, 1), shape=SHAPE)
    shutil.copy(root / "preprocessed" / folder.parent.name / "dataset_fingerprint.json", folder)
    for fold in (0, 1):
        shutil.copy(
            folder / f"fold_{fold}" / "checkpoint_final.pth", folder / f"fold_{fold}" / "checkpoint_best.pth"
        )
        (folder / f"fold_{fold}" / "validation").mkdir()
        (folder / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
        (folder / f"fold_{fold}" / "training_log.txt").write_text("epoch 0\n")
    return folder


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory) -> str:
    """A SQLite registry holding version 1 of ``NAME`` (alias ``champion``): fold 0 of ``model``, registered by the
    CLI; returns its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["register-model", f"nnunet:{model}", NAME, "--tracking-uri", uri, "--alias", "champion",
                   "--folds", "0"])  # fmt: skip
    assert rc == 0
    assert re.search(rf"registered models:/{NAME}/1 \(alias champion\) from MLflow run \w+", out.getvalue())
    return uri


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Datalist with a ``test`` split of one oblique phantom (CT and label)."""
    folder = tmp_path_factory.mktemp("labelled")
    phantom = make_phantom(43, shape=SHAPE, spacing=(1.5, 1.5, 3.0), oblique=True)
    write_nifti(phantom.ct.astype(np.int16), phantom.affine, folder / "p1_ct.nii.gz")
    write_nifti(phantom.label, phantom.affine, folder / "p1_label.nii.gz")
    entries = [{"case": "p1", "image": "p1_ct.nii.gz", "label": "p1_label.nii.gz"}]
    (folder / "dataset.json").write_text(json.dumps({"test": entries}))
    return folder / "dataset.json"


@pytest.fixture(scope="module")
def direct(model, labelled, tmp_path_factory) -> np.ndarray:
    """The mask of ``clinseg predict nnunet:PATH --folds 0``."""
    out = tmp_path_factory.mktemp("direct")
    assert main(["predict", f"nnunet:{model}", "--input", str(labelled), "--output", str(out), "--folds", "0",
                 *FAST]) == 0  # fmt: skip
    mask = np.asarray(nib.load(out / "p1" / "seg.nii.gz").dataobj)
    assert set(np.unique(mask)) == {0, 1, 2}, "the random network should predict every label"
    return mask


def _client(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_files(client: mlflow.MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_the_version_holds_only_the_chosen_folds_checkpoint_and_names_the_model(registry):
    client = _client(registry)
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1" and version.tags["clinseg.artifact"] == "nnunet-folder"
    assert version.source.endswith(f"/nnunet_model/{TRAINER_FOLDER}")
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "clinseg-models"
    assert run.data.params == {
        "dataset": "Dataset901_Phantom", "plans": "nnUNetPlans", "trainer": "nnUNetTrainer",
        "configuration": "3d_fullres", "folds": "0", "checkpoint_name": "checkpoint_final.pth",
        "labels": json.dumps({"1": "organ", "2": "lesion"}),
    }  # fmt: skip
    expected = {"plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"}
    assert _artifact_files(client, version.run_id) == {f"nnunet_model/{TRAINER_FOLDER}/{f}" for f in expected}


@pytest.mark.parametrize("uri", [f"models:/{NAME}/1", f"models:/{NAME}@champion"])
def test_predict_from_the_registered_model_writes_the_masks_of_the_folder(
    registry, labelled, direct, uri, tmp_path
):
    out = tmp_path / "out"
    assert main(["predict", uri, "--tracking-uri", registry, "--input", str(labelled), "--output", str(out),
                 *FAST]) == 0  # fmt: skip
    np.testing.assert_array_equal(np.asarray(nib.load(out / "p1" / "seg.nii.gz").dataobj), direct)
    run = json.loads((out / "report.json").read_text())["run"]
    assert run["folds"] == ["0"] and run["labels"] == {"1": "organ", "2": "lesion"}


def test_predictor_from_bundle_opens_it_and_the_download_goes_with_the_predictor(registry, labelled, direct):
    built = Predictor.from_bundle(f"models:/{NAME}@champion", tracking_uri=registry, folds=[0],
                                  options=InferenceOptions(device="cpu"))  # fmt: skip
    assert isinstance(built, NnunetPredictor) and built.folder.folds == (0,)
    assert built.folder.path.name == TRAINER_FOLDER
    labels = built.predict({"image": labelled.parent / "p1_ct.nii.gz"}).labels
    np.testing.assert_array_equal(np.asarray(labels[0]), direct)
    downloaded = built.folder.path
    del built, labels
    gc.collect()
    assert not downloaded.exists()
    with pytest.raises(FileNotFoundError, match="fold 1 is missing"):
        Predictor.from_bundle(f"models:/{NAME}/1", tracking_uri=registry, folds=[1])


def test_evaluate_and_serve_take_the_registered_model(registry, labelled, tmp_path, monkeypatch):
    assert main(["evaluate", f"models:/{NAME}/1", "--tracking-uri", registry, "--datalist", str(labelled),
                 "--split", "test", "--no-tracking", "--output", str(tmp_path / "eval"), "--device", "cpu",
                 "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "eval" / "per_case.csv").is_file()
    nodes = []
    monkeypatch.setattr(StorageNode, "serve_forever", lambda self: nodes.append(self))
    assert main(["serve", f"models:/{NAME}@champion", "--tracking-uri", registry, "--spool", str(tmp_path / "spool"),
                 "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0  # fmt: skip
    (node,) = nodes
    assert isinstance(node.predictor, NnunetPredictor) and node.predictor.folder.folds == (0,)


def test_bundle_commands_name_a_registered_nnunet_model_as_such(registry):
    with pytest.raises(
        ValueError, match=rf"models:/{NAME}/1 in .* is an nnU-Net trained-model folder, not a bundle"
    ):
        Bundle.at(f"models:/{NAME}/1", tracking_uri=registry)


class _NotData:
    """A pickled object of this class is code to run, not data."""


def _unsafe_checkpoint(folder: Path) -> None:
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({**torch.load(checkpoint, weights_only=False), "logging": _NotData()}, checkpoint)


def _no_folds(folder: Path) -> None:
    for fold in folder.glob("fold_*"):
        shutil.rmtree(fold)


@pytest.mark.parametrize(
    ("spoil", "extra", "message"),
    [
        (_unsafe_checkpoint, ["--folds", "0"],
         r"nnU-Net checkpoint .*fold_0/checkpoint_final.pth: holds more than tensors and plain data .*_NotData"),
        (_no_folds, [], r"no fold_N/checkpoint_final.pth: no such checkpoint \(no fold_N/ folders\)"),
        (None, ["--folds", "3"], r"fold 3 is missing \(no fold_3/\)"),
        (None, ["--folds", "0", "--checkpoint-name", "checkpoint_latest.pth"],
         r"fold_0/checkpoint_latest.pth: no such checkpoint \(fold_0/: checkpoint_best.pth, checkpoint_final.pth\)"),
    ],
    ids=["unsafe-checkpoint", "no-folds", "missing-fold", "missing-checkpoint"],
)  # fmt: skip
def test_unsafe_or_incomplete_folders_are_refused_before_any_mlflow_run(
    model, tmp_path, caplog, spoil, extra, message
):
    folder = tmp_path / model.name
    shutil.copytree(model, folder)
    if spoil:
        spoil(folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.ERROR)
    assert main(["register-model", f"nnunet:{folder}", NAME, "--tracking-uri", uri, *extra]) == 2
    assert re.search(message, caplog.text), caplog.text
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["nnunet:MODEL", NAME, "--bundle", "bundles/ct_organ_resunet3d"], "--bundle is for training runs"),
     (["0123abcd", NAME, "--folds", "0"], r"--folds is for an nnU-Net folder \(nnunet:PATH\), not a training run")],
    ids=["bundle-for-nnunet", "folds-for-a-run"],
)  # fmt: skip
def test_register_model_refuses_flags_of_the_other_kind(model, args, message, caplog, tmp_path):
    caplog.set_level(logging.ERROR)
    args = [a.replace("MODEL", str(model)) for a in args]
    assert main(["register-model", *args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert re.search(message, caplog.text), caplog.text
