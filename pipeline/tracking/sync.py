"""Replay a :class:`~pipeline.tracking.journal.TrackingJournal` to MLflow in order and exactly once.

A record is marked synced only after MLflow accepted it. Replaying a record again (the server applied it but
its answer was lost) changes nothing: metrics carry their original timestamp and step (MLflow's SQL store
drops exact duplicates), params and tags are set to the same values, artifacts overwrite the same path, and
the run is found by its name before one is created.

While the server is unreachable a replayer waits a growing back-off (2 s doubling to 30 s) between attempts,
each bounded by ``request_timeout`` and no HTTP retries, and stops trying once failed attempts have cost
``outage_budget_s`` in total; what is left stays in the journal for the end of training, a resumed run or
``clinseg tracking sync``. A copy of an artifact is deleted once it has been uploaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.tracking.journal import TrackingJournal, journal_dir_of, open_journal
from pipeline.tracking.run_tags import ensure_experiment

logger = logging.getLogger(__name__)

_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"}
_METRICS_PER_BATCH = 1000  # MLflow's log_batch cap


class TrackingOutage(RuntimeError):
    """The tracking store did not answer; the records stay pending."""


@contextlib.contextmanager
def http_limits(max_retries: int, timeout: float) -> Iterator[None]:
    """Bound MLflow's HTTP retries/timeout (read per request) unless the user set them in the environment."""
    names = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout)),
    }
    added = [name for name in names if name not in os.environ]
    os.environ.update({name: names[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass
class SyncPolicy:
    """Limits of replaying while a server may be down (seconds)."""

    request_timeout: float = 5.0
    first_backoff: float = 2.0
    max_backoff: float = 30.0
    outage_budget_s: float = 45.0


class JournalReplayer:
    """Sends a journal's pending records to MLflow (see module docstring).

    Args:
        journal: the run's journal.
        tracking_uri: where to replay (default: the URI the run was journaled with).
        policy: timeouts, back-off and the total time an outage may cost.
    """

    def __init__(
        self, journal: TrackingJournal, tracking_uri: str | None = None, policy: SyncPolicy | None = None
    ) -> None:
        self.journal = journal
        self._uri = tracking_uri
        self.policy = policy or SyncPolicy()
        self._client: Any = None
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = self.policy.first_backoff
        self.outage_spent = 0.0
        self.last_error = ""

    @property
    def tracking_uri(self) -> str | None:
        if not self._uri:  # the URI the run was journaled with (its first record)
            first = self.journal.first_record()
            self._uri = first["tracking_uri"] if first and first["op"] == "run" else None
        return self._uri

    @property
    def gave_up(self) -> bool:
        """Whether failed attempts of the current outage used up its budget (no more attempts from this
        replayer; a refused connection costs milliseconds, a server that accepts and never answers a timeout)."""
        return self.outage_spent >= self.policy.outage_budget_s

    def flush(self, wait: bool = False) -> bool:
        """Replay pending records; returns whether none is left. Never raises for an unreachable server.

        Skips the attempt while backing off (unless ``wait``) and once the outage budget is spent.
        """
        with self._lock:
            if not self.journal.pending():
                return True
            if self.gave_up or self.tracking_uri is None or (not wait and time.monotonic() < self._retry_at):
                return False
            started = time.monotonic()
            try:
                with http_limits(0, self.policy.request_timeout):
                    self._replay()
            except Exception as error:  # noqa: BLE001 - any failure of the store leaves the records pending
                self._failed(error, time.monotonic() - started)
                return False
            self._backoff = self.policy.first_backoff
            self._retry_at = 0.0
            self.outage_spent = 0.0  # the budget is per outage
            return True

    def _failed(self, error: Exception, spent: float) -> None:
        was_up = self._retry_at == 0.0
        self.outage_spent += spent
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(2 * self._backoff, self.policy.max_backoff)
        self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        if was_up:
            logger.warning(
                "MLflow tracking store %s did not answer (%s); training goes on, tracking is kept in %s and "
                "replayed when it answers again", self.tracking_uri, self.last_error, self.journal.folder,
            )  # fmt: skip
        if self.gave_up:
            logger.warning(
                "MLflow tracking store %s still unreachable after %.0f s of attempts; no more attempts in this "
                "process, replay later with: clinseg tracking sync %s",
                self.tracking_uri, self.outage_spent, self.journal.folder.parent,
            )  # fmt: skip

    def _mlflow(self) -> Any:
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _replay(self) -> None:
        pending = self.journal.pending()
        index = 0
        while index < len(pending):
            record = pending[index]
            if record["op"] == "metrics":  # consecutive metrics records go in one request
                batch = [record]
                size = len(record["metrics"])
                while (
                    index + len(batch) < len(pending)
                    and pending[index + len(batch)]["op"] == "metrics"
                    and size + len(pending[index + len(batch)]["metrics"]) <= _METRICS_PER_BATCH
                ):
                    size += len(pending[index + len(batch)]["metrics"])
                    batch.append(pending[index + len(batch)])
                self._apply_checked(batch)
                index += len(batch)
            else:
                self._apply_checked([record])
                index += 1

    def _apply_checked(self, records: list[dict[str, Any]]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._apply(records)
        except MlflowException as error:
            code = getattr(error, "error_code", "")
            if code not in _REJECTED:
                raise
            # the store answered and refused this record: retrying cannot help, so it is reported and passed
            logger.warning(
                "MLflow refused journal record %d (%s, %s): %s", records[0]["seq"], records[0]["op"], code,
                str(error).splitlines()[0][:300],
            )  # fmt: skip
        self.journal.mark_synced(records[-1]["seq"])
        if records[0]["op"] in {"artifact", "model"}:
            self.journal.drop_copy(records[0])

    def _run_id(self) -> str:
        run_id = self.journal.state.get("run_id")
        if not run_id:
            raise RuntimeError(f"journal {self.journal.folder} has no run record before its other records")
        return run_id

    def _apply(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._mlflow()
        op = records[0]["op"]
        if op == "run":
            self._open_run(records[0])
        elif op == "metrics":
            metrics = [Metric(k, v, t, s) for r in records for k, v, t, s in r["metrics"]]
            client.log_batch(self._run_id(), metrics=metrics)
        elif op == "params":
            params = [Param(k, v) for k, v in records[0]["params"].items()]
            for start in range(0, len(params), 100):  # MLflow's cap per request
                client.log_batch(self._run_id(), params=params[start : start + 100])
        elif op == "tags":
            client.log_batch(self._run_id(), tags=[RunTag(k, v) for k, v in records[0]["tags"].items()])
        elif op == "artifact":
            local = self.journal.folder / records[0]["local"]
            if not local.exists():  # deleted after its upload; the mark of that upload was lost
                logger.warning(
                    "journal record %d: %s is gone (uploaded before?), skipped", records[0]["seq"], local
                )
                return
            upload = client.log_artifacts if local.is_dir() else client.log_artifact
            upload(self._run_id(), str(local), records[0]["artifact_path"])
        elif op == "model":
            from pipeline.tracking.run_artifacts import log_logged_model

            local = self.journal.folder / records[0]["local"]
            if not local.exists():
                logger.warning("journal record %d: %s is gone (logged before?), skipped", records[0]["seq"], local)
                return
            log_logged_model(client, self._run_id(), local, records[0]["name"])
        elif op == "register":
            from pipeline.tracking.run_artifacts import register_model_version

            register_model_version(client, self._run_id(), records[0]["name"], records[0]["artifact_path"])
        elif op == "status":
            record = records[0]
            if record["status"] == "RUNNING":
                client.update_run(self._run_id(), status="RUNNING")
            else:
                client.set_terminated(self._run_id(), record["status"], end_time=record["end_time"])
        else:
            raise ValueError(
                f"{self.journal.folder}: unknown journal op {op!r} in record {records[0]['seq']}"
            )

    def _open_run(self, record: dict[str, Any]) -> None:
        """Find or create the experiment (tagged for MLflow 3's model-training view) and the run (found by
        name first, so a lost answer makes no twin)."""
        client = self._mlflow()
        if self.journal.state.get("run_id"):
            return
        experiment = ensure_experiment(client, record["experiment"], self.tracking_uri)
        found = client.search_runs(
            [experiment], filter_string=f"attributes.run_name = '{record['run_name']}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )  # fmt: skip
        run = (
            found[0]
            if found
            else client.create_run(experiment, start_time=record["time"], run_name=record["run_name"])
        )
        self.journal.state.update(run_id=run.info.run_id, experiment_id=experiment)


_REPLAYERS: dict[Path, JournalReplayer] = {}
_REPLAYERS_LOCK = threading.Lock()


def shared_replayer(journal_dir: str | Path) -> JournalReplayer:
    """The process-wide replayer of a journal folder (shared by the handlers of one run)."""
    journal = open_journal(journal_dir)
    with _REPLAYERS_LOCK:
        replayer = _REPLAYERS.get(journal.folder)
        if replayer is None or replayer.journal is not journal:
            replayer = _REPLAYERS[journal.folder] = JournalReplayer(journal)
        return replayer


@dataclass
class SyncReport:
    """What ``clinseg tracking sync`` did."""

    journal_dir: Path
    replayed: int
    left: str
    run_id: str | None
    tracking_uri: str | None
    error: str = ""

    def summary_line(self) -> str:
        if self.left:
            return (
                f"{self.journal_dir}: replayed {self.replayed} records; still unsynced: {self.left} "
                f"({self.tracking_uri}: {self.error})"
            )
        return f"{self.journal_dir}: replayed {self.replayed} records, MLflow run {self.run_id} in {self.tracking_uri} is up to date"


def sync_run(
    run_dir: str | Path, tracking_uri: str | None = None, policy: SyncPolicy | None = None
) -> SyncReport:
    """Replay what a run's journal still holds (``run_dir``: the checkpoint folder or the journal itself)."""
    folder = journal_dir_of(run_dir)
    if not (folder / "journal.jsonl").is_file():
        raise FileNotFoundError(f"no MLflow journal in {run_dir} (expected {folder}/journal.jsonl)")
    replayer = JournalReplayer(open_journal(folder), tracking_uri, policy or SyncPolicy(outage_budget_s=0.1))
    before = len(replayer.journal.pending())
    replayer.flush(wait=True)
    left = replayer.journal.pending()
    return SyncReport(
        folder, before - len(left), replayer.journal.describe_pending(), replayer.journal.state.get("run_id"),
        replayer.tracking_uri, replayer.last_error,
    )  # fmt: skip
