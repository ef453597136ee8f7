"""The durable MLflow journal, its replay and the journaling handler, on SQLite stores and a dead HTTP URI."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from pipeline.cli import main
from pipeline.evaluation.compare import compare_runs
from pipeline.tracking.mlflow_handler import ResilientMLFlowHandler
from pipeline.tracking.run_tags import CKPT_DIR_TAG
from pipeline.tracking.journal import TrackingJournal, open_journal
from pipeline.tracking.sync import JournalReplayer, SyncPolicy, sync_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(client: mlflow.MlflowClient, experiment: str = "journal") -> mlflow.entities.Run:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def _steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_journal_keeps_each_metric_step_and_param_once_and_survives_a_cut_line(tmp_path):
    journal = TrackingJournal(tmp_path / "j")
    journal.open_run("sqlite:///x.db", "journal", "run-a")
    journal.log_params({"lr": 0.1, "epochs": 3})
    assert journal.log_metrics({"loss": 1.0}, step=1) is not None
    assert journal.log_metrics({"loss": 0.9}, step=1) is None  # (key, step) already journaled
    assert journal.log_params({"lr": 0.2}) is None  # a resumed run keeps its first values
    journal.log_metrics({"loss": 0.8, "dice": 0.5}, step=2)
    with open(tmp_path / "j" / "journal.jsonl", "a") as f:
        f.write('{"seq": 99, "op": "met')  # a crash mid-write
    reopened = TrackingJournal(tmp_path / "j")
    assert [r["seq"] for r in reopened.records] == [1, 2, 3, 4]
    assert [(m.step, m.value) for m in reopened.metric_histories()["loss"]] == [(1, 1.0), (2, 0.8)]
    assert reopened.log_metrics({"loss": 0.7, "dice": 0.6}, step=2) is None
    reopened.mark_synced(2, run_id="abc")
    again = TrackingJournal(tmp_path / "j")
    assert [r["seq"] for r in again.pending()] == [3, 4] and again.state["run_id"] == "abc"
    assert again.describe_pending() == "2 metrics records"


def test_replay_is_in_order_and_exactly_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    journal = TrackingJournal(tmp_path / "j")
    journal.open_run(uri, "journal", "run-b")
    journal.log_tags({"fold": 1})
    for step in range(1, 6):
        journal.log_metrics({"loss": 1.0 / step}, step=step)
    (tmp_path / "cfg.yaml").write_text("a: 1\n")
    journal.log_artifact(tmp_path / "cfg.yaml")
    (tmp_path / "cfg.yaml").write_text("a: 2\n")  # later changes do not reach the logged copy
    journal.set_status("FINISHED")
    assert JournalReplayer(journal).flush()
    assert not list((tmp_path / "j" / "files").rglob("cfg.yaml"))  # the copy goes once uploaded
    journal.mark_synced(2)  # as if the answers to everything after the tags were lost: replayed again
    assert JournalReplayer(journal).flush() and not journal.pending()

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _run(client)
    assert run.info.status == "FINISHED" and run.data.tags["fold"] == "1"
    assert _steps(client, run.info.run_id, "loss") == [1, 2, 3, 4, 5]
    local = client.download_artifacts(run.info.run_id, "cfg.yaml", str(tmp_path / "down"))
    assert Path(local).read_text() == "a: 1\n"


def test_unreachable_server_leaves_records_pending_backs_off_and_gives_up(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    journal = TrackingJournal(tmp_path / "j")
    journal.open_run(uri, "journal", "run-c")
    journal.log_metrics({"loss": 1.0}, step=1)
    replayer = JournalReplayer(journal, policy=SyncPolicy(request_timeout=2, outage_budget_s=60))
    started = time.monotonic()
    assert not replayer.flush()
    assert not replayer.flush()  # backing off: not even attempted
    assert time.monotonic() - started < 30
    assert len(journal.pending()) == 2 and replayer.last_error
    replayer.outage_spent = 60.0
    assert replayer.gave_up and not replayer.flush(wait=True)
    report = sync_run(tmp_path / "j")
    assert report.left == "1 run, 1 metrics records" and report.replayed == 0
    assert main(["tracking", "sync", str(tmp_path / "j")]) == 3


def _trainer(
    iterations: int = 3, fail_at: int | None = None, error: type[BaseException] = RuntimeError
) -> Engine:
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine: Engine, batch: torch.Tensor) -> float:
        if engine.state.iteration == fail_at:
            raise error("boom")
        optimizer.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    trainer.optimizer = optimizer
    return trainer


def _handler(tmp_path, uri: str, **kwargs) -> ResilientMLFlowHandler:
    return ResilientMLFlowHandler(
        journal_dir=str(tmp_path / "ckpt" / "mlflow_journal"), tracking_uri=uri, experiment_name="journal",
        run_name="run-d", output_transform=lambda loss: loss, tag_name="train_loss_iter", close_on_complete=True,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fail_at", "error", "status"),
    [(None, None, "FINISHED"), (4, RuntimeError, "FAILED"), (4, KeyboardInterrupt, "KILLED")],
)
def test_handler_always_sets_the_final_status(tmp_path, fail_at, error, status):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trainer = _trainer(fail_at=fail_at, error=error or RuntimeError)
    _handler(tmp_path, uri, tags={"fold": 0}).attach(trainer)
    if error is None:
        trainer.run([torch.ones(1, 2)] * 3, max_epochs=2)
    else:
        with pytest.raises(error):
            trainer.run([torch.ones(1, 2)] * 3, max_epochs=2)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _run(client)
    assert run.info.status == status and run.data.tags["fold"] == "0"
    assert _steps(client, run.info.run_id, "train_loss_iter") == list(range(1, 7 if error is None else 4))
    assert not open_journal(tmp_path / "ckpt" / "mlflow_journal").pending()


def test_resumed_run_logs_no_step_twice_and_monai_handler_is_detached(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = _trainer(fail_at=5, error=KeyboardInterrupt)
    _handler(tmp_path, uri).attach(first)
    with pytest.raises(KeyboardInterrupt):
        first.run([torch.ones(1, 2)] * 3, max_epochs=3)  # iterations 1-4 logged, killed in epoch 2

    resumed = _trainer()
    _handler(tmp_path, uri).attach(resumed)
    # as MONAI's --tracking mlflow adds it: same store, same run
    MLFlowHandler(
        tracking_uri=uri, experiment_name="journal", run_name="run-d", tag_name="train_loss_iter",
        output_transform=lambda loss: loss,
    ).attach(resumed)  # fmt: skip

    @resumed.on(Events.STARTED)
    def _from_epoch_1(engine: Engine) -> None:  # as ResumeHandler: restart from the epoch-1 checkpoint
        engine.state.iteration, engine.state.epoch = 3, 1

    resumed.run([torch.ones(1, 2)] * 3, max_epochs=3)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _run(client)
    assert run.info.status == "FINISHED"
    steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train_loss_iter"))
    assert sorted(steps) == list(range(1, 10)) and set(steps.values()) == {1}
    assert Counter(m.step for m in client.get_metric_history(run.info.run_id, "lr_group_0"))[4] == 1
    lines = (tmp_path / "ckpt" / "mlflow_journal" / "journal.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records if r["op"] == "status"] == ["KILLED", "RUNNING", "FINISHED"]


def test_compare_warns_about_unsynced_records_and_sees_the_best_dice_once_synced(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    journal = TrackingJournal(tmp_path / "ckpt" / "mlflow_journal")
    journal.open_run(uri, "journal", "run-e")
    journal.log_tags({CKPT_DIR_TAG: str(tmp_path / "ckpt")})
    journal.log_metrics({"val_mean_dice": 0.5}, step=1)
    assert JournalReplayer(journal).flush()
    journal.log_metrics({"val_mean_dice": 0.9}, step=2)  # journaled while the store was away
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.compare"):
        row = compare_runs(uri, experiment="journal").rows[0]
    assert (row["val_mean_dice_best"], row["best_step"]) == (0.5, 1)
    assert f"clinseg tracking sync {tmp_path / 'ckpt'}" in caplog.text and "1 metrics records" in caplog.text
    assert JournalReplayer(journal).flush()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.compare"):
        row = compare_runs(uri, experiment="journal").rows[0]
    assert (row["val_mean_dice_best"], row["best_step"]) == (0.9, 2) and not caplog.text


def test_sigterm_ends_the_run_killed_and_the_previous_handler_comes_back(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trainer = _trainer()
    _handler(tmp_path, uri).attach(trainer)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def _terminate(engine: Engine) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        trainer.run([torch.ones(1, 2)] * 3, max_epochs=2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert _run(mlflow.MlflowClient(tracking_uri=uri)).info.status == "KILLED"
