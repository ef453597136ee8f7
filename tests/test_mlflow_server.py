"""Against a real ``mlflow server`` on 127.0.0.1: a bundle trains and is read back with MlflowClient; a dead
server fails ``clinseg train`` fast; a server dying mid-run costs one warning and no training or checkpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from pipeline.cli import main
from pipeline.resilient_mlflow import ResilientMLFlowHandler
from pipeline.tracking import TrackingUnavailableError
from pipeline.training import train_bundle
from tests.conftest import BUNDLES, REPO

BUNDLE = BUNDLES / "ct_organ_resunet3d"
MLFLOW = Path(sys.executable).with_name("mlflow")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 90.0) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """Start ``mlflow server`` (SQLite backend, served artifacts) and wait for /health; always stop it."""
    port = _free_port()
    db = root / "server.db"
    command = [
        str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
        str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield uri, process, db
    finally:
        _kill_group(process)
        log.close()


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the server and its workers (its own process group; it was started in a new session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_bundle_trains_against_a_server_and_reads_back(tiny_dataset, tmp_path):
    with mlflow_server(tmp_path) as (uri, _, _):
        ckpt_dir = tmp_path / "ckpt"
        command = [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", str(BUNDLE / "configs" / "train.yaml"),
            "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
            "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
            "--bundle_root", str(BUNDLE),
            "--dataset_dir", str(tiny_dataset.parent),
            "--ckpt_dir", str(ckpt_dir),
            "--tracking_uri", uri,
            "--run_name", "server-smoke",
            "--max_epochs", "1", "--val_interval", "1", "--batch_size", "2", "--samples_per_volume", "1",
            "--roi_size", "[32, 32, 16]",
        ]  # fmt: skip
        env = {
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "2",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(REPO),
        }
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
        assert [r.info.run_name for r in runs] == ["server-smoke"]
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert {"train_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion"} <= set(run.data.metrics)
        assert run.data.params["network"] == "res_unet"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"train.yaml", "metadata.json", "model.pt"} <= artifacts
        assert (tmp_path / "artifacts").is_dir()  # served by the server, not written by the client's cwd


def test_train_fails_fast_with_a_clear_message_on_a_dead_server(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    args = [
        "--dataset-dir",
        str(tiny_dataset.parent),
        "--tracking-uri",
        uri,
        "--ckpt-dir",
        str(tmp_path / "ckpt"),
    ]
    assert main(["train", str(BUNDLE), *args, "--epochs", "1"]) == 2
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(RuntimeError) as caught:
        train_bundle(
            BUNDLE,
            dataset_dir=tiny_dataset.parent,
            tracking_uri=uri,
            ckpt_dir=tmp_path / "ckpt",
            max_epochs=1,
        )
    chain = [caught.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert isinstance(chain[-1], TrackingUnavailableError)  # MONAI's ConfigExpression wraps it
    assert f"MLflow tracking server {uri} is not reachable" in str(chain[-1])


def test_server_dying_mid_run_warns_once_and_training_finishes(tmp_path, caplog):
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    data = [torch.randn(4, 3) for _ in range(3)]
    with mlflow_server(tmp_path) as (uri, server, db):
        handler = ResilientMLFlowHandler(
            tracking_uri=uri, experiment_name="resilience", run_name="dies", output_transform=lambda loss: loss,
            tags={"fold": 2, "bundle.name": "tiny"}, close_on_complete=True, max_retries=0, request_timeout=5,
        )  # fmt: skip
        handler.attach(trainer)
        CheckpointSaver(
            str(tmp_path / "ckpt"), {"model": net}, save_interval=1, n_saved=1, epoch_level=True
        ).attach(trainer)

        @trainer.on(Events.ITERATION_COMPLETED(once=4))
        def _kill_server(engine: Engine) -> None:
            _kill_group(server)  # a crash, not a shutdown

        with caplog.at_level(logging.WARNING, logger="pipeline.resilient_mlflow"):
            trainer.run(data, max_epochs=4)

    assert trainer.state.epoch == 4 and trainer.state.iteration == 12
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["model_epoch=4.pt"]
    warnings = [r for r in caplog.records if r.name == "pipeline.resilient_mlflow"]
    assert len(warnings) == 1 and "stopped answering" in warnings[0].getMessage()
    assert handler.disabled

    store = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")  # the dead server's own backend store
    run = store.search_runs([store.get_experiment_by_name("resilience").experiment_id])[0]
    assert run.data.tags["fold"] == "2" and run.data.tags["bundle.name"] == "tiny"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "Loss")] == [1, 2, 3, 4]
