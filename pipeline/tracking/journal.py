"""A durable journal of one run's MLflow calls, kept beside its checkpoints until the tracking server has them.

Every call is written here first (append-only, fsync'd) and replayed to MLflow by
:class:`pipeline.tracking.sync.JournalReplayer`, so a tracking server that is down loses nothing. Layout of
``<ckpt_dir>/mlflow_journal/``::

    journal.jsonl   one record per call, in order: {"seq": 7, "op": "metrics", "metrics": [[key, value, ms, step]]}
    state.json      {"synced": 6, "run_id": "...", "experiment_id": "..."}: replaced atomically after each replay
    files/<seq>/    copies of artifacts taken when they were logged (model.pt changes later); deleted once uploaded

Ops: ``run`` (tracking_uri, experiment, run_name), ``params``, ``tags``, ``metrics``, ``artifact`` (a file or a
folder under ``files/``, artifact_path), ``model`` (an MLflow model folder under ``files/``, name: logged as an MLflow 3
LoggedModel of the run), ``register`` (registered model name, artifact_path), ``status``
(RUNNING, FINISHED, FAILED or KILLED, end_time).

A (metric key, step) pair is journaled once: a resumed run that replays an interrupted epoch does not log its
iterations again. A param is journaled once (a resumed run keeps its first values, as MLflow requires).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

JOURNAL_DIRNAME = "mlflow_journal"
_RECORDS = "journal.jsonl"
_STATE = "state.json"
_FILES = "files"


class MetricPoint(NamedTuple):
    """One logged metric value (the attributes of ``mlflow.entities.Metric`` that readers use)."""

    key: str
    value: float
    timestamp: int
    step: int


def now_ms() -> int:
    return int(time.time() * 1000)


def journal_dir_of(path: str | Path) -> Path:
    """The journal folder of a run: ``path`` itself when it holds a journal, else ``path/mlflow_journal``."""
    path = Path(path)
    return path if (path / _RECORDS).is_file() or path.name == JOURNAL_DIRNAME else path / JOURNAL_DIRNAME


class TrackingJournal:
    """Append-only record of one MLflow run's calls and how far they were replayed (see module docstring).

    Args:
        folder: the journal folder (created); an existing journal is continued (a resumed run).
        readonly: only read it (e.g. while its run may still be writing): no folder created, nothing repaired.
    """

    def __init__(self, folder: str | Path, readonly: bool = False) -> None:
        self.folder = Path(folder)
        if not readonly:
            self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records: list[dict[str, Any]] = self._load(repair=not readonly)
        state_file = self.folder / _STATE
        self.state: dict[str, Any] = (
            json.loads(state_file.read_text()) if state_file.is_file() else {"synced": 0}
        )
        self._last_step: dict[str, int] = {}
        self._params: set[str] = set()
        for record in self._records:
            self._index(record)

    def _load(self, repair: bool) -> list[dict[str, Any]]:
        """Records on disk; a last line cut by a crash mid-write is dropped (and, with ``repair``, cut from the
        file)."""
        path = self.folder / _RECORDS
        if not path.is_file():
            return []
        raw = path.read_bytes()
        good = raw[: raw.rfind(b"\n") + 1]
        if repair and len(good) != len(raw):
            with open(path, "r+b") as f:
                f.truncate(len(good))
        records = []
        for number, line in enumerate(good.decode().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not a journal record ({error})") from error
            if record.get("seq") != number:
                raise ValueError(
                    f"{path}: line {number} holds record seq {record.get('seq')}, expected {number}"
                )
            records.append(record)
        return records

    def _index(self, record: Mapping[str, Any]) -> None:
        if record["op"] == "metrics":
            for key, _, _, step in record["metrics"]:
                self._last_step[key] = max(step, self._last_step.get(key, step))
        elif record["op"] == "params":
            self._params.update(record["params"])

    @property
    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    @property
    def started(self) -> bool:
        """Whether a run was opened in this journal (by this or an earlier, e.g. killed, process)."""
        return any(r["op"] == "run" for r in self._records)

    def append(self, op: str, **fields: Any) -> int:
        """Write one record (fsync'd before returning); returns its sequence number."""
        with self._lock:
            seq = len(self._records) + 1
            record = {"seq": seq, "op": op, "time": now_ms(), **fields}
            with open(self.folder / _RECORDS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._records.append(record)
            self._index(record)
            return seq

    def open_run(self, tracking_uri: str, experiment: str, run_name: str) -> None:
        """Journal the run's start; a journal already holding a run (a resumed one) marks it RUNNING again."""
        with self._lock:
            if self.started:
                self.append("status", status="RUNNING", end_time=None)
            else:
                self.append("run", tracking_uri=tracking_uri, experiment=experiment, run_name=run_name)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int, timestamp: int | None = None
    ) -> int | None:
        """Journal the metrics whose key has no value at ``step`` or later yet; returns the record's seq."""
        with self._lock:
            new = [
                [str(k), float(v), timestamp or now_ms(), int(step)]
                for k, v in metrics.items()
                if step > self._last_step.get(str(k), -(2**62))
            ]
            return self.append("metrics", metrics=new) if new else None

    def log_params(self, params: Mapping[str, Any]) -> int | None:
        """Journal the params not journaled before (values as strings, MLflow's 6000-character cap)."""
        with self._lock:
            new = {str(k): str(v)[:6000] for k, v in params.items() if str(k) not in self._params}
            return self.append("params", params=new) if new else None

    def log_tags(self, tags: Mapping[str, Any]) -> int | None:
        return self.append("tags", tags={str(k): str(v) for k, v in tags.items()}) if tags else None

    def log_artifact(self, local: str | Path, artifact_path: str | None = None) -> int:
        """Copy a file or folder into the journal now, and journal its upload under ``artifact_path``."""
        return self._append_copy("artifact", local, artifact_path=artifact_path)

    def log_model(self, local: str | Path, name: str) -> int:
        """Copy an MLflow model folder into the journal now, and journal it as the run's LoggedModel ``name``."""
        return self._append_copy("model", local, name=name)

    def _append_copy(self, op: str, local: str | Path, **fields: Any) -> int:
        local = Path(local)
        if not local.exists():
            raise FileNotFoundError(f"{op} {local} does not exist")
        with self._lock:
            seq = len(self._records) + 1
            copy = self.folder / _FILES / str(seq) / local.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if local.is_dir() else shutil.copy2)(local, copy)
            return self.append(op, local=str(copy.relative_to(self.folder)), **fields)

    def drop_copy(self, record: Mapping[str, Any]) -> None:
        """Delete the copy of a synced artifact record (its folder ``files/<seq>``)."""
        shutil.rmtree(self.folder / _FILES / str(record["seq"]), ignore_errors=True)

    def register_model(self, name: str, artifact_path: str) -> int:
        return self.append("register", name=name, artifact_path=artifact_path)

    def set_status(self, status: str) -> int:
        return self.append("status", status=status, end_time=now_ms())

    def first_record(self) -> dict[str, Any] | None:
        with self._lock:
            return self._records[0] if self._records else None

    def pending(self) -> list[dict[str, Any]]:
        """Records not yet replayed to MLflow, in order (record ``seq`` n is the n-th line)."""
        with self._lock:
            return self._records[int(self.state.get("synced", 0)) :]

    def mark_synced(self, seq: int, **state: Any) -> None:
        """Record that everything up to ``seq`` reached MLflow (and e.g. the run id); written atomically."""
        with self._lock:
            self.state.update(state, synced=int(seq))
            atomic_write_text(self.folder / _STATE, json.dumps(self.state, indent=2) + "\n")

    def metric_histories(self, keys: Iterable[str] | None = None) -> dict[str, list[MetricPoint]]:
        """Every journaled value per metric key (synced or not), in logging order."""
        wanted = None if keys is None else set(keys)
        histories: dict[str, list[MetricPoint]] = {}
        for record in self.records:
            if record["op"] == "metrics":
                for key, value, timestamp, step in record["metrics"]:
                    if wanted is None or key in wanted:
                        histories.setdefault(key, []).append(MetricPoint(key, value, timestamp, step))
        return histories

    def describe_pending(self) -> str:
        """``"3 metrics records, 2 artifacts, 1 status"`` for the pending records (empty when all synced)."""
        counts: dict[str, int] = {}
        for record in self.pending():
            counts[record["op"]] = counts.get(record["op"], 0) + 1
        names = {"metrics": "metrics records", "artifact": "artifacts", "params": "params records", "model": "models"}
        return ", ".join(f"{n} {names.get(op, op)}" for op, n in counts.items())


_OPEN: dict[Path, TrackingJournal] = {}
_OPEN_LOCK = threading.Lock()


def open_journal(folder: str | Path) -> TrackingJournal:
    """The process-wide journal of ``folder``: the trainer's and validator's handlers of a run share it."""
    key = Path(folder).resolve()
    with _OPEN_LOCK:
        journal = _OPEN.get(key)
        if journal is None or not (key / _RECORDS).exists() and journal.records:
            journal = _OPEN[key] = TrackingJournal(key)
        return journal


def open_run_journal(folder: str | Path, run_name: str) -> TrackingJournal:
    """:func:`open_journal` for run ``run_name``: a journal of another run in that folder (a checkpoint folder
    trained again without resuming) is removed when fully replayed, else kept aside as ``mlflow_journal-<run>``.
    """
    journal = open_journal(folder)
    names = [r["run_name"] for r in journal.records if r["op"] == "run"]
    if not names or names[0] == run_name:
        return journal
    with _OPEN_LOCK:
        _OPEN.pop(journal.folder, None)
    if journal.pending():
        aside = journal.folder.with_name(f"{journal.folder.name}-{names[0]}")
        os.replace(journal.folder, aside)
        logger.warning(
            "MLflow journal of the earlier run %s in %s still holds %s; kept in %s (clinseg tracking sync %s)",
            names[0], journal.folder.parent, journal.describe_pending(), aside, aside,
        )  # fmt: skip
    else:
        shutil.rmtree(journal.folder)
    return open_journal(folder)
