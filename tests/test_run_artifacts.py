"""End-of-training MLflow artifacts: TorchScript, PyTorch-flavour model, curves, overlays; loss-history parsing."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import mlflow.pytorch
import pytest
import torch

from pipeline.core.checkpoint import network_from_checkpoint
from pipeline.tracking.run_artifacts import RunArtifactsHandler, epoch_loss_points, log_pytorch_model
from pipeline.training.train import train_bundle
from tests.conftest import BUNDLES

BUNDLE = BUNDLES / "ct_organ_resunet3d"
SMALL = {"val_interval": 1, "batch_size": 2, "samples_per_volume": 1, "roi_size": [32, 32, 16]}


def _metric(step: int, value: float, timestamp: int) -> SimpleNamespace:
    return SimpleNamespace(step=step, value=value, timestamp=timestamp)


def test_epoch_loss_points_separates_epoch_means_from_iteration_losses():
    # epoch length 2: iterations 1..4, epoch means after iterations 2 and 4; a resume replays iterations 3, 4
    logged = [(1, 1.0), (2, 0.8), (1, 0.9), (3, 0.7), (3, 0.71), (4, 0.6), (2, 0.65)]
    history = [_metric(s, v, 1000 + i // 2) for i, (s, v) in enumerate(logged)]  # timestamp ties in pairs
    assert epoch_loss_points(history, epoch_length=2, mixed=True) == [(1.0, 0.9), (2.0, 0.65)]
    assert epoch_loss_points([_metric(2, 0.5, 9), _metric(1, 0.6, 3)], 5, mixed=False) == [
        (1.0, 0.6),
        (2.0, 0.5),
    ]
    with pytest.raises(ValueError, match="epoch_length must be >= 1, got 0"):
        epoch_loss_points(history, epoch_length=0, mixed=True)


def test_handler_rejects_negative_overlay_count(tmp_path):
    with pytest.raises(ValueError, match="max_overlays must be >= 0, got -1"):
        RunArtifactsHandler(tmp_path / "mlflow_journal", tmp_path / "model.pt", max_overlays=-1)


def test_missing_best_checkpoint_is_a_warning_not_a_failure(tmp_path, caplog):
    handler = RunArtifactsHandler(tmp_path / "mlflow_journal", tmp_path / "model.pt")
    handler(SimpleNamespace(state=SimpleNamespace(epoch_length=1)))
    assert "best checkpoint" in caplog.text and "does not exist" in caplog.text


def _artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _logged_models(client: mlflow.MlflowClient, run_id: str, name: str = "pytorch_model") -> list:
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"name = '{name}'")
    return [m for m in found if m.source_run_id == run_id]


@pytest.mark.slow
def test_training_logs_torchscript_pytorch_model_curves_and_overlays(tiny_dataset, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # resolves runs:/ URIs below; the handler honours it too
    result = train_bundle(
        BUNDLE,
        dataset_dir=tiny_dataset.parent,
        ckpt_dir=tmp_path / "ckpt",
        tracking_uri=uri,
        max_epochs=1,
        overrides=SMALL,
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    paths = _artifact_paths(client, result.run_id)
    assert "model/model.ts" in paths
    assert {"curves/loss.png", "curves/validation.png"} <= set(paths)
    overlays = [p for p in paths if p.startswith("overlays/")]
    assert overlays == ["overlays/case_001.png"]  # the one validation case, named by its datalist id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    (model,) = _logged_models(client, result.run_id)  # MLflow 3's "Logged models" of the run
    assert model.name == "pytorch_model" and str(model.status) == "READY"
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "requirements.txt"} <= files

    reference = network_from_checkpoint(result.best_checkpoint)
    scripted = torch.jit.load(client.download_artifacts(result.run_id, "model/model.ts", str(tmp_path)))
    flavour = mlflow.pytorch.load_model(f"runs:/{result.run_id}/pytorch_model")
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(scripted(x), expected)
        torch.testing.assert_close(flavour(x), expected)

    version = log_pytorch_model(
        client, result.run_id, scripted, "registered", registered_model_name="ct_organ"
    )
    assert version == f"runs:/{result.run_id}/registered"
    (registered,) = client.search_model_versions("name='ct_organ'")
    assert registered.run_id == result.run_id
    assert registered.source == f"models:/{_logged_models(client, result.run_id, 'registered')[0].model_id}"


@pytest.mark.parametrize("register", [None, "tiny_net"])
def test_pytorch_model_is_a_logged_model_of_the_run_once(tmp_path, monkeypatch, register):
    """MLflow 3 lists it under the run's "Logged models"; a replay reuses it; runs:/ URIs still load it."""
    torch.set_num_threads(1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("m", (tmp_path / "mlruns").as_uri())).info.run_id
    scripted = torch.jit.script(torch.nn.Conv3d(1, 2, 1).eval())
    for _ in range(2):  # the second call is a replay of the first
        uri_logged = log_pytorch_model(client, run_id, scripted, registered_model_name=register)
    (model,) = _logged_models(client, run_id)
    assert str(model.status) == "READY" and model.model_type == "pytorch"
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model.model_id]
    x = torch.rand(1, 1, 3, 4, 5)
    torch.testing.assert_close(mlflow.pytorch.load_model(uri_logged)(x), scripted(x))
    versions = client.search_model_versions(f"name='{register}'") if register else []
    assert [v.source for v in versions] == ([f"models:/{model.model_id}"] if register else [])
