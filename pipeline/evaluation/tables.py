"""Evaluation outputs: per-case and summary tables written atomically, and an MLflow evaluation run holding them."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_json, atomic_write_text
from pipeline.evaluation.evaluated_model import EvaluatedModel
from pipeline.evaluation.result import EvaluationResult
from pipeline.tracking.run_tags import (
    CKPT_DIR_TAG, RUN_TYPE_TAG, TRAIN_RUN_TAG, ensure_experiment, run_page_url, run_tags,
)  # fmt: skip
from pipeline.tracking.store import CONFIG_AS_RUN, new_run_name

logger = logging.getLogger(__name__)

PER_CASE_CSV = "per_case.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
TABLE_ARTIFACT = "evaluation/per_case.json"


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """nan/inf -> None, so the JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_tables(
    rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], out_dir: str | Path
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.csv`` and ``summary.json`` (nan as ``null``) atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError("no evaluated cases: the datalist split is empty")
    return {
        "per_case": atomic_write_text(out_dir / PER_CASE_CSV, _csv_text(rows)),
        "summary": atomic_write_text(out_dir / SUMMARY_CSV, _csv_text(summary)),
        "summary_json": atomic_write_json(out_dir / SUMMARY_JSON, _json_safe({"summary": list(summary)})),
    }


def training_store(checkpoint: str | Path) -> str | None:
    """The MLflow store the checkpoint's training run logged to, as the run recorded it in the checkpoint
    folder's config as run (``config_run.json``); None when there is no such record."""
    record = Path(checkpoint).resolve().parent / CONFIG_AS_RUN
    try:
        uri = json.loads(record.read_text()).get("tracking_uri")
    except (OSError, ValueError, AttributeError):
        return None
    return uri if isinstance(uri, str) and uri and not uri.startswith(("$", "@")) else None


def evaluation_store(checkpoint: str | Path, tracking_uri: str | None = None) -> tuple[str, str]:
    """The store an evaluation logs to and why: ``tracking_uri`` when given, else ``MLFLOW_TRACKING_URI``, else
    the store of the checkpoint's training run (:func:`training_store`), else ``./mlflow.db``.

    Returns:
        ``(uri, reason)``, e.g. ``("sqlite:////work/demo/mlflow.db", "the training run's store, from ...")``.
    """
    from pipeline.core.tracking_uri import resolve_tracking_uri

    trained = training_store(checkpoint)
    record = Path(checkpoint).resolve().parent / CONFIG_AS_RUN
    fallback = (trained, f"the training run's store, from {record}") if trained else None
    return resolve_tracking_uri(tracking_uri, fallback=fallback)


def find_training_run(client: Any, checkpoint: str | Path) -> str | None:
    """The newest training run tagged with the checkpoint's folder (``clinseg.ckpt_dir``), or None."""
    folder = str(Path(checkpoint).resolve().parent).replace("'", "\\'")
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`{CKPT_DIR_TAG}` = '{folder}' and tags.`{RUN_TYPE_TAG}` = 'training'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_evaluation(
    model: EvaluatedModel,
    result: EvaluationResult,
    files: Mapping[str, Path],
    tracking_uri: str,
    *,
    datalist: str | Path,
    checkpoints: Sequence[str | Path],
    params: Mapping[str, Any],
    experiment_name: str = "clinseg",
    train_run_id: str | None = None,
    start_time_ms: int | None = None,
) -> str:
    """Log an evaluation as a new MLflow run: per-label means as metrics, the tables as artifacts, the per-case
    rows as the table artifact ``evaluation/per_case.json``; linked to the training run(s) when known.

    ``start_time_ms`` (epoch milliseconds) is when the evaluation began, so the run's duration is the
    evaluation's, not the logging's; default: now.

    Returns:
        The evaluation run id.
    """
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from pipeline.tracking.store import require_tracking_server

    require_tracking_server(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    train_ids = [train_run_id] if train_run_id else [find_training_run(client, c) for c in checkpoints]
    train_ids = list(dict.fromkeys(t for t in train_ids if t))
    tags = run_tags(dict(model.meta), datalist_file=datalist, bundle_root=model.root, run_type="evaluation")
    if train_ids:
        tags[TRAIN_RUN_TAG] = ",".join(train_ids)
    run = client.create_run(
        ensure_experiment(client, experiment_name, tracking_uri),
        start_time=start_time_ms,
        run_name=new_run_name(f"{model.name}-eval"),
        tags=tags,
    )
    run_id = run.info.run_id
    try:
        ckpt_param = ",".join(str(Path(c).resolve()) for c in checkpoints)
        all_params = {**{k: str(v) for k, v in params.items()}, "checkpoints": ckpt_param[:6000]}
        metrics = [Metric("eval_mean_dice", result.mean("dice"), 0, 0)]
        for s in result.summary:
            if math.isfinite(s["mean"]):
                metrics.append(Metric(f"eval_{s['metric']}_{s['name']}", s["mean"], 0, 0))
        client.log_batch(
            run_id,
            metrics=[m for m in metrics if math.isfinite(m.value)],
            params=[Param(k, v) for k, v in all_params.items()],
            tags=[RunTag("mlflow.note.content", result.summary_line())],
        )
        columns = list(dict.fromkeys(k for row in result.rows for k in row))
        table = {c: [row.get(c) for row in result.rows] for c in columns}
        client.log_table(run_id, data=table, artifact_file=TABLE_ARTIFACT)
        for path in files.values():
            client.log_artifact(run_id, str(path), artifact_path="evaluation")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    page = run_page_url(tracking_uri, run.info.experiment_id, run_id)
    logger.info("logged evaluation run %s to %s", run_id, page or tracking_uri)
    return run_id
