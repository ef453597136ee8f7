"""A training run killed mid-way and resumed ends exactly like an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from pipeline.core.checkpoint import load_checkpoint
from tests.conftest import BUNDLES

BUNDLE = BUNDLES / "ct_organ_resunet3d"
EPOCHS = 4


def _command(dataset_json, ckpt_dir, db, epochs, *extra):
    return [
        sys.executable, "-m", "pipeline.cli", "train", str(BUNDLE),
        "--dataset-dir", str(dataset_json.parent), "--ckpt-dir", str(ckpt_dir), "--tracking-uri", f"sqlite:///{db}",
        "--epochs", str(epochs), "--set", "val_interval=1", "--set", "batch_size=2", "--set", "samples_per_volume=1",
        "--set", "roi_size=[32, 32, 16]", "--set", "seed=7", *extra,
    ]  # fmt: skip


def _env(tmp_path):
    return {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "HOME": str(tmp_path)}


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tiny_dataset, tmp_path):
    db = tmp_path / "mlflow.db"
    done = subprocess.run(_command(tiny_dataset, tmp_path / "a", db, EPOCHS), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    run_b = tmp_path / "b"
    proc = subprocess.Popen(_command(tiny_dataset, run_b, db, 50), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_b / "checkpoint_epoch=2.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # killed as a power cut would, maybe mid-save: the newest file may be cut
    proc.wait()
    assert not (run_b / "model_final.pt").exists(), "the run must have been killed before finishing"

    done = subprocess.run(_command(tiny_dataset, run_b, db, EPOCHS, "--resume"), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr

    a, b = load_checkpoint(tmp_path / "a" / "model_final.pt"), load_checkpoint(run_b / "model_final.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == EPOCHS * 2  # 2 iterations per epoch
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, msg=f"weights differ at {name}")
    best_a, best_b = load_checkpoint(tmp_path / "a" / "model.pt"), load_checkpoint(run_b / "model.pt")
    assert best_a["validation"] == best_b["validation"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])}
    assert len(runs) == 2, "the resumed run must log into the MLflow run it started"
    name_b = (run_b / "run_name.txt").read_text().strip()
    run_b_id = runs[name_b].info.run_id
    history = client.get_metric_history(run_b_id, "val_mean_dice")
    assert max(m.step for m in history) == EPOCHS
    assert client.get_run(run_b_id).info.status == "FINISHED"
    for key in runs[name_b].data.metrics:  # the replayed epoch logs no step a second time
        steps = [m.step for m in client.get_metric_history(run_b_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step after resuming: {sorted(steps)}"
    iterations = sorted(m.step for m in client.get_metric_history(run_b_id, "train_loss_iter"))
    assert iterations == list(range(1, EPOCHS * 2 + 1))
