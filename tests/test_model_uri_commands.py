"""Every command that takes a bundle takes a registered model: ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``
resolve in the library (``Bundle.at``, ``Predictor.from_bundle``), tried on a local SQLite MLflow registry."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
import torch

from pipeline.cli import main
from pipeline.core.bundle import Bundle
from pipeline.inference.predictor import Predictor
from pipeline.pacs.serve import StorageNode
from tests.test_predictor import BUNDLE, random_checkpoint
from pipeline.export.configs import exported_configs, write_yaml

FAST = ["--device", "cpu", "--roi-size", "32", "32", "16", "--no-uncertainty"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """``(tracking URI, tmp folder)`` of a registry holding version 1 of ``organ`` (alias ``champion``): the test
    bundle with a random-weight ``models/model.pt``."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("registry")
    bundle = tmp / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")  # metadata, common.yaml ...
    for name, config in exported_configs(Bundle.at(BUNDLE), None).items():  # standalone, as clinseg export writes
        write_yaml(config, bundle / "configs" / f"{name}.yaml", "test bundle")
    (bundle / "models").mkdir()
    random_checkpoint(bundle / "models" / "model.pt")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("models", artifact_location=(tmp / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(bundle), "bundle")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("organ")
    version = client.create_model_version("organ", f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    client.set_registered_model_alias("organ", "champion", version.version)
    return uri, tmp


@pytest.mark.parametrize("model", ["models:/organ/1", "models:/organ@champion"])
def test_bundle_and_predictor_take_a_registered_model(registry, model):
    uri, _ = registry
    bundle = Bundle.at(model, tracking_uri=uri)
    assert bundle.default_checkpoint.is_file()
    predictor = Predictor.from_bundle(model, tracking_uri=uri, options=None)
    assert predictor.class_names and len(predictor.networks) == 1


def test_an_unknown_version_is_a_clear_error(registry):
    uri, _ = registry
    with pytest.raises(ValueError, match="models:/organ/9 not found"):
        Bundle.at("models:/organ/9", tracking_uri=uri)


@pytest.mark.slow
def test_predict_and_evaluate_take_a_registered_model(registry, tiny_dataset, tmp_path):
    uri, _ = registry
    out = tmp_path / "pred"
    assert main(["predict", "models:/organ@champion", "--tracking-uri", uri, "--input", str(tiny_dataset),
                 "--output", str(out), "--no-preview", "--no-dicom-seg", "--quiet", *FAST]) == 0  # fmt: skip
    tests = [c["case"] for c in json.loads(tiny_dataset.read_text())["test"]]
    assert all((out / case / "seg.nii.gz").is_file() for case in tests)
    assert main(["evaluate", "models:/organ/1", "--tracking-uri", uri, "--dataset-dir", str(tiny_dataset.parent),
                 "--no-tracking", "--output", str(tmp_path / "eval"), "--quiet", *FAST]) == 0  # fmt: skip
    assert (tmp_path / "eval" / "per_case.csv").is_file()


def test_serve_takes_a_registered_model(registry, tmp_path, monkeypatch):
    uri, _ = registry
    nodes = []
    monkeypatch.setattr(StorageNode, "serve_forever", lambda self: nodes.append(self))
    assert main(["serve", "models:/organ/1", "--tracking-uri", uri, "--spool", str(tmp_path / "spool"),
                 "--output", str(tmp_path / "out"), *FAST]) == 0  # fmt: skip
    (node,) = nodes
    assert node.predictor.class_names
