"""Against a real ``mlflow server`` on 127.0.0.1: a bundle trains and is read back with MlflowClient; a dead
server fails ``clinseg train`` fast; a server killed mid-run and restarted (same store, same port) gets every
metric and artifact exactly once, during training or through ``clinseg tracking sync``."""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from pipeline.cli import main
from pipeline.evaluation.compare import compare_runs
from pipeline.training.handlers import EpochSummaryHandler
from pipeline.tracking.mlflow_handler import ResilientMLFlowHandler
from pipeline.tracking.store import TrackingUnavailableError
from pipeline.tracking.sync import shared_replayer
from pipeline.training.train import train_bundle
from tests.conftest import BUNDLES, REPO
from pipeline.core.bundle import Bundle

BUNDLE = BUNDLES / "ct_organ_resunet3d"
MLFLOW = Path(sys.executable).with_name("mlflow")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` (SQLite backend, served artifacts) on a fixed port, startable again on the same store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = root / "server.db"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        command = [
            str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
            str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"mlflow server did not come up: {(self.root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process is not None:
            _kill_group(self.process)


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, MlflowServer, Path]]:
    """Start ``mlflow server`` and wait for /health; always stop it."""
    server = MlflowServer(root)
    try:
        server.start()
        yield server.uri, server, server.db
    finally:
        server.kill()


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
            "--config_file", str(Bundle.at(BUNDLE).config_files("train")),  # common, the shared base, the delta
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
        assert len(client.get_metric_history(run.info.run_id, "train_loss_iter")) == 2
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


def test_server_dying_mid_run_warns_once_and_sync_completes_the_run(tmp_path, caplog):
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
            journal_dir=str(tmp_path / "ckpt" / "mlflow_journal"), tracking_uri=uri, experiment_name="resilience",
            run_name="dies", output_transform=lambda loss: loss, tags={"fold": 2, "bundle.name": "tiny"},
            close_on_complete=True,
        )  # fmt: skip
        handler.attach(trainer)
        CheckpointSaver(
            str(tmp_path / "ckpt"), {"model": net}, save_interval=1, n_saved=1, epoch_level=True
        ).attach(trainer)

        @trainer.on(Events.ITERATION_COMPLETED(once=4))
        def _kill_server(engine: Engine) -> None:
            server.kill()  # a crash, not a shutdown

        with caplog.at_level(logging.WARNING, logger="pipeline"):
            trainer.run(data, max_epochs=4)

        assert trainer.state.epoch == 4 and trainer.state.iteration == 12
        assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["model_epoch=4.pt"]
        outage = [r for r in caplog.records if "did not answer" in r.getMessage()]
        assert len(outage) == 1
        unsynced = [r.getMessage() for r in caplog.records if r.name == "pipeline.tracking.mlflow_handler"]
        assert len(unsynced) == 1 and f"clinseg tracking sync {tmp_path / 'ckpt'}" in unsynced[0]

        store = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")  # the dead server's own backend store
        run = store.search_runs([store.get_experiment_by_name("resilience").experiment_id])[0]
        assert run.data.tags["fold"] == "2" and run.data.tags["bundle.name"] == "tiny"
        assert [m.step for m in store.get_metric_history(run.info.run_id, "Loss")] == [1, 2, 3, 4]
        assert run.info.status == "RUNNING"

        server.start()  # same store, same port
        assert main(["tracking", "sync", str(tmp_path / "ckpt")]) == 0
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(run.info.run_id)
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "Loss"))
        assert steps == list(range(1, 13))


def test_records_are_replayed_as_soon_as_the_server_answers_again(tmp_path):
    trainer = Engine(lambda engine, batch: 0.5)
    server = MlflowServer(tmp_path)
    pending_after_restart = []
    try:
        server.start()
        handler = ResilientMLFlowHandler(
            journal_dir=str(tmp_path / "mlflow_journal"), tracking_uri=server.uri, experiment_name="back",
            run_name="back", output_transform=lambda loss: loss, close_on_complete=True,
        )  # fmt: skip
        handler.policy.first_backoff = handler.policy.max_backoff = 0.0  # attempt at every event
        handler.attach(trainer)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda _: server.kill())
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda _: server.start())
        trainer.add_event_handler(  # the handler logged iteration 6 (attached first): all replayed by then
            Events.ITERATION_COMPLETED(once=6),
            lambda _: pending_after_restart.append(handler.journal.pending()),
        )
        trainer.run([0] * 3, max_epochs=3)
        assert handler.replayer.last_error and pending_after_restart == [[]]
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = client.search_runs([client.get_experiment_by_name("back").experiment_id])[0]
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "Loss"))
        assert steps == list(range(1, 10))
    finally:
        server.kill()


SMALL = {"val_interval": 1, "batch_size": 2, "samples_per_volume": 1, "roi_size": [32, 32, 16]}
EXPECTED_ARTIFACTS = {"train.yaml", "metadata.json", "model.pt", "config_run.json", "model/model.ts"}


def _artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def _on_epoch_end(monkeypatch, actions: dict[int, Callable[[], None]]) -> None:
    """Run ``actions[epoch]`` in the training loop at the end of that epoch (after validation, before the
    trainer's MLflow handler logs the epoch), through the bundle's ``EpochSummaryHandler``."""
    summary = EpochSummaryHandler._summary

    def hooked(self: EpochSummaryHandler, engine: Engine) -> None:
        summary(self, engine)
        if engine.state.epoch in actions:
            actions[engine.state.epoch]()

    monkeypatch.setattr(EpochSummaryHandler, "_summary", hooked)


def _check_run(client: mlflow.MlflowClient, run_id: str, epochs: int, iterations: int) -> dict[str, int]:
    """Every epoch's metrics and every iteration's loss once; returns the counts for the report."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    expected = {("train_loss", e) for e in range(1, epochs + 1)}
    expected |= {
        (k, e) for k in ("val_mean_dice", "val_dice_organ", "val_dice_lesion") for e in range(1, epochs + 1)
    }
    expected |= {(k, i) for k in ("train_loss_iter", "lr_group_0") for i in range(1, iterations + 1)}
    logged = [(m.key, m.step) for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
    assert expected <= set(logged), f"missing: {sorted(expected - set(logged))}"
    duplicated = len(logged) - len(set(logged))
    assert duplicated == 0, f"logged twice: {[p for p in set(logged) if logged.count(p) > 1]}"
    artifacts = _artifact_paths(client, run_id)
    wanted = EXPECTED_ARTIFACTS | {"curves/loss.png", "curves/validation.png"}
    assert wanted <= set(artifacts) and len(artifacts) == len(set(artifacts))
    models = client.search_logged_models([run.info.experiment_id], filter_string="name = 'pytorch_model'")
    (model,) = [m for m in models if m.source_run_id == run_id]  # one LoggedModel, however often replayed
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    return {
        "expected": len(expected), "arrived": len(set(logged) & expected), "duplicated": duplicated,
        "artifacts_expected": len(wanted), "artifacts_arrived": len(wanted & set(artifacts)),
        "artifact_files": len(artifacts),
    }  # fmt: skip


def test_server_killed_after_epoch_1_and_restarted_in_epoch_4_loses_nothing(
    tiny_dataset, tmp_path, monkeypatch
):
    server = MlflowServer(tmp_path)
    _on_epoch_end(monkeypatch, {1: server.kill, 3: server.start})
    try:
        server.start()
        result = train_bundle(
            BUNDLE, dataset_dir=tiny_dataset.parent, ckpt_dir=tmp_path / "ckpt", tracking_uri=server.uri,
            max_epochs=5, overrides=SMALL,
        )  # fmt: skip
        # the bundle's logging.conf replaces the root handlers (caplog's too): the replayer tells of the outage
        assert shared_replayer(tmp_path / "ckpt" / "mlflow_journal").last_error, (
            "the outage must have been met"
        )
        assert result.unsynced == "" and "tracking sync" not in result.summary()
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        counts = _check_run(client, result.run_id, epochs=5, iterations=10)
        assert counts["arrived"] == counts["expected"]
        print(f"outage test: metrics {counts}")

        best = compare_runs(server.uri, run_ids=[result.run_id]).rows[0]
        history = client.get_metric_history(result.run_id, "val_mean_dice")
        assert best["val_mean_dice_best"] == max(m.value for m in history)
        assert best["best_step"] == result.best_epoch
    finally:
        server.kill()


def test_server_gone_after_the_last_epoch_then_tracking_sync_completes_the_run(
    tiny_dataset, tmp_path, monkeypatch, capsys
):
    server = MlflowServer(tmp_path)
    _on_epoch_end(monkeypatch, {2: server.kill})
    try:
        server.start()
        args = ["--dataset-dir", str(tiny_dataset.parent), "--ckpt-dir", str(tmp_path / "ckpt"),
                "--tracking-uri", server.uri, "--epochs", "2"]  # fmt: skip
        args += [f"--set={k}={v}" for k, v in SMALL.items()]
        assert main(["train", str(BUNDLE), *args]) == 0
        out = capsys.readouterr().out
        assert "best val_mean_dice" in out and f"clinseg tracking sync {tmp_path / 'ckpt'}" in out
        assert "warning: not yet in MLflow:" in out and "status" in out

        assert main(["tracking", "sync", str(tmp_path / "ckpt")]) == 3  # still down: exit 3, nothing lost
        server.start()
        assert main(["tracking", "sync", str(tmp_path / "ckpt")]) == 0
        assert "is up to date" in capsys.readouterr().out
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run_name = (tmp_path / "ckpt" / "run_name.txt").read_text().strip()
        run = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id],
                                 filter_string=f"attributes.run_name = '{run_name}'")[0]  # fmt: skip
        _check_run(client, run.info.run_id, epochs=2, iterations=4)
    finally:
        server.kill()
