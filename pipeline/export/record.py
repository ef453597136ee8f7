"""What a training run measured, read from its checkpoint folder (best checkpoint, config as run, MLflow
journal) or from its MLflow run: the facts an exported bundle's metadata and docs report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.checkpoint import epoch_checkpoints, load_checkpoint
from pipeline.tracking.journal import JOURNAL_DIRNAME, TrackingJournal
from pipeline.tracking.store import CONFIG_AS_RUN

__all__ = ["KEY_METRIC", "RunRecord", "best_checkpoint_of", "record_from_histories", "run_record"]

KEY_METRIC = "val_mean_dice"
PER_CLASS_PREFIX = "val_dice_"
BEST_CHECKPOINT = "model.pt"


@dataclass
class RunRecord:
    """A training run as an exported bundle describes it.

    Attributes:
        checkpoint: the weights exported (the best checkpoint unless another file was named).
        config_as_run: the run's merged config (``config_run.json``), ``None`` when the folder has none.
        metrics: measured validation metrics at the best epoch (``val_mean_dice``, ``val_dice_<class>``).
        best_epoch: epoch of the best validation; epochs: epochs trained (0 when unknown).
        run_name, run_id, tracking_uri: the MLflow run, when known.
    """

    checkpoint: Path
    config_as_run: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    epochs: int = 0
    run_name: str = ""
    run_id: str | None = None
    tracking_uri: str | None = None

    def source(self, quote: str = "") -> str:
        """What was exported, in words: ``training run NAME``, or ``checkpoint FILE`` for an unnamed run; the
        name between ``quote``s (a backtick for Markdown)."""
        if self.run_name:
            return f"training run {quote}{self.run_name}{quote}"
        return f"checkpoint {quote}{self.checkpoint.name}{quote}"


def best_checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a run folder or checkpoint path names: ``<folder>/model.pt`` for a folder."""
    path = Path(path)
    if path.is_dir():
        checkpoint = path / BEST_CHECKPOINT
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"run folder {path} has no best checkpoint {BEST_CHECKPOINT} (no validation ran?)"
            )
        return checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")
    return path


def record_from_histories(
    checkpoint: Path, histories: Mapping[str, Sequence[Any]], record: RunRecord | None = None
) -> RunRecord:
    """Fill a record's metrics from metric histories (objects with ``value`` and ``step`` = epoch): the best
    epoch from the checkpoint's stored validation state, else the epoch of the best ``val_mean_dice``."""
    record = record or RunRecord(checkpoint)
    validation = load_checkpoint(checkpoint).get("validation")
    dice = [(float(m.value), int(m.step)) for m in histories.get(KEY_METRIC, [])]
    if isinstance(validation, Mapping) and "best_metric" in validation:
        record.metrics[KEY_METRIC] = float(validation["best_metric"])
        record.best_epoch = int(validation.get("best_metric_epoch", 0))
    elif dice:
        best, record.best_epoch = max(dice)
        record.metrics[KEY_METRIC] = best
    for key, history in sorted(histories.items()):
        if key.startswith(PER_CLASS_PREFIX):
            at_best = [float(m.value) for m in history if int(m.step) == record.best_epoch]
            if at_best:
                record.metrics[key] = at_best[-1]
    if dice:
        record.epochs = max(record.epochs, max(step for _, step in dice))
    return record


def run_record(path: str | Path) -> RunRecord:
    """The record of a run folder (``clinseg train --ckpt-dir``) or of one checkpoint file in it.

    Metrics come from the checkpoint's validation state and the run's MLflow journal (read only, no server
    asked); ``config_run.json`` beside the checkpoint is the config as run.
    """
    checkpoint = best_checkpoint_of(path)
    folder = checkpoint.parent
    record = RunRecord(checkpoint)
    config_file = folder / CONFIG_AS_RUN
    if config_file.is_file():
        record.config_as_run = json.loads(config_file.read_text())
    epochs = epoch_checkpoints(folder)
    if epochs:
        record.epochs = int(epochs[0].stem.split("=")[1])
    histories: dict[str, list[Any]] = {}
    journal_dir = folder / JOURNAL_DIRNAME
    if (journal_dir / "journal.jsonl").is_file():
        journal = TrackingJournal(journal_dir, readonly=True)
        histories = journal.metric_histories()
        first = journal.first_record() or {}
        record.run_name = str(first.get("run_name", ""))
        record.tracking_uri = first.get("tracking_uri")
        record.run_id = journal.state.get("run_id")
    return record_from_histories(checkpoint, histories, record)
