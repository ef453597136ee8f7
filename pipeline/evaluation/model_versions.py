"""``clinseg compare --models NAME``: the versions of a registered model with their aliases, training run and
measured metrics (the ``val_*`` tags :func:`pipeline.export.registry.register_run` sets, else the run's)."""

from __future__ import annotations

import datetime
from typing import Any

from pipeline.evaluation.compare import _client
from pipeline.evaluation.table_format import ComparisonTable

__all__ = ["model_versions"]

_BASE = ["version", "aliases", "created", "run_id", "source_run"]


def model_versions(tracking_uri: str | None, name: str) -> ComparisonTable:
    """One row per version of model ``name``, newest first; a metric column per ``val_*`` metric found."""
    client = _client(tracking_uri)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    if not versions:
        raise ValueError(f"no registered model {name!r} (or it has no versions) in {client.tracking_uri}")
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows, metric_keys = [], set()
    for version in versions:
        metrics = {k: float(v) for k, v in version.tags.items() if k.startswith("val_")}
        run_name = ""
        if version.run_id:
            run = _run(client, version.run_id)
            if run is not None:
                run_name = run.info.run_name or ""
                if not metrics:
                    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("val_")}
        metric_keys.update(metrics)
        created = datetime.datetime.fromtimestamp(version.creation_timestamp / 1000, datetime.timezone.utc)
        rows.append({
            "version": int(version.version), "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
            "created": created.strftime("%Y-%m-%d %H:%M:%S"), "run_id": version.run_id, "source_run": run_name,
            **metrics,
        })  # fmt: skip
    return ComparisonTable(_BASE + sorted(metric_keys), rows)


def _run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None
