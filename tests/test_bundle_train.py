"""Training through ``python -m monai.bundle run`` on the shipped bundle: checkpoints and an MLflow run."""

from __future__ import annotations

import mlflow
import pytest
import torch

from pipeline.core.checkpoint import load_checkpoint, network_from_checkpoint
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES

BUNDLE = BUNDLES / "ct_organ_resunet3d"


@pytest.mark.slow
def test_two_iterations_through_monai_bundle_write_checkpoint_and_mlflow_run(tiny_dataset, tmp_path):
    db = tmp_path / "mlflow.db"
    ckpt_dir = tmp_path / "ckpt"
    tiny = [
        "--dataset_dir", str(tiny_dataset.parent),
        "--ckpt_dir", str(ckpt_dir),
        "--tracking_uri", f"sqlite:///{db}",
        "--run_name", "bundle-smoke",
        "--max_epochs", "1",
        "--val_interval", "1",
        "--batch_size", "2",
        "--samples_per_volume", "1",
        "--roi_size", "[32, 32, 16]",
    ]  # fmt: skip
    # MONAI's --tracking mlflow appends its own MLFlowHandler (same store and run): ours detaches it
    monai_bundle_run(BUNDLE, ["train"], tmp_path, *tiny, "--tracking", "mlflow", "--output_dir", str(tmp_path / "monai_out"))

    assert (ckpt_dir / "model.pt").is_file() and (ckpt_dir / "model_final.pt").is_file()
    final = load_checkpoint(ckpt_dir / "model_final.pt")
    assert {"model", "network", "optimizer", "trainer", "lr_scheduler"} <= set(final)
    assert final["trainer"]["iteration"] == 2  # 3 training cases, batch 2 -> 2 iterations
    net = network_from_checkpoint(ckpt_dir / "model.pt")
    assert net(torch.zeros(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("clinseg")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["bundle-smoke"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion"} <= set(run.data.metrics)
    assert run.data.params["network"] == "res_unet"
    assert run.data.params["bundle.name"] == "ct_organ_resunet3d"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]  # epoch mean
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss_iter")) == [1, 2]
    for key in run.data.metrics:  # one value per (key, step): no second handler logged
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train.yaml", "metadata.json", "model.pt"} <= artifacts

    # the evaluate overlay validates the trained checkpoint with the same pipeline, through monai.bundle
    monai_bundle_run(BUNDLE, ["train", "evaluate"], tmp_path, *tiny, "--output_dir", str(tmp_path / "eval"))
    raw = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 2  # header + the one validation case
    assert (tmp_path / "eval" / "metrics.csv").is_file()
