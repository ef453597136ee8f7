"""The MLflow Model Registry: a training run registered as a model version whose artifact is its exported
bundle (:func:`register_run`; an nnU-Net trained-model folder: :mod:`pipeline.export.nnunet_registry`); a
``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI is fetched back by :mod:`pipeline.core.model_uri`. Works
against any MLflow store through ``MlflowClient``; credentials come only from the environment, as MLflow reads them
(``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.bundle import CONFIG_SUFFIXES, Bundle
from pipeline.core.model_uri import ARTIFACT_TAG, BUNDLE_KIND, MODEL_URI
from pipeline.export.bundle import export_bundle
from pipeline.export.record import BEST_CHECKPOINT, RunRecord, record_from_histories, run_record
from pipeline.tracking.store import CONFIG_AS_RUN, default_tracking_uri

__all__ = ["BUNDLE_ARTIFACT", "RegisteredModel", "create_version", "register_run", "registry_client"]

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
"""Artifact path of the exported bundle under the training run; the model version's source."""
_CONFIG_SUFFIXES = (*CONFIG_SUFFIXES, ".conf")


@dataclass
class RegisteredModel:
    """A model version created by :func:`register_run` or
    :func:`~pipeline.export.nnunet_registry.register_nnunet_folder`."""

    name: str
    version: str
    run_id: str
    source: str
    metrics: dict[str, float] = field(default_factory=dict)
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"{MODEL_URI}{self.name}/{self.version}"

    def summary(self) -> str:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(self.metrics.items()))
        alias = f" (alias {self.alias})" if self.alias else ""
        return f"registered {self.uri}{alias} from MLflow run {self.run_id}" + (
            f": {metrics}" if metrics else ""
        )


def registry_client(tracking_uri: str | None) -> Any:
    """An ``MlflowClient`` whose store and registry are ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, else
    ``./mlflow.db``)."""
    from mlflow import MlflowClient

    uri = default_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _record_from_mlflow(client: Any, run_id: str, folder: Path) -> tuple[RunRecord, Bundle]:
    """Download a training run's best checkpoint, config as run and bundle configs (artifacts at its root) into
    ``folder`` as a bundle; the record's metrics come from the run's metric histories."""
    run = client.get_run(run_id)
    names = {a.path for a in client.list_artifacts(run_id) if not a.is_dir}
    if BEST_CHECKPOINT not in names or "metadata.json" not in names:
        raise ValueError(
            f"MLflow run {run_id} has no {BEST_CHECKPOINT} and metadata.json artifacts: not a clinseg training run"
        )
    configs = folder / "configs"
    configs.mkdir(parents=True)
    for name in sorted(names):
        if name == BEST_CHECKPOINT or Path(name).suffix in _CONFIG_SUFFIXES:
            client.download_artifacts(
                run_id, name, str(folder if name in (BEST_CHECKPOINT, CONFIG_AS_RUN) else configs)
            )
    histories = {
        key: client.get_metric_history(run_id, key)
        for key in run.data.metrics
        if key.startswith("val_")
    }  # fmt: skip
    record = RunRecord(folder / BEST_CHECKPOINT, run_name=run.info.run_name or "", run_id=run_id)
    config_file = folder / CONFIG_AS_RUN
    if config_file.is_file():
        record.config_as_run = json.loads(config_file.read_text())
    return record_from_histories(record.checkpoint, histories, record), Bundle.at(folder)


def register_run(
    run: str | Path,
    name: str,
    *,
    bundle: str | Path | Bundle | None = None,
    tracking_uri: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Export a training run's best model (:func:`~pipeline.export.bundle.export_bundle`), log the bundle as the
    run's ``bundle/`` artifact and register it as a new version of model ``name``.

    Args:
        run: the run's checkpoint folder (its MLflow journal names the run and store) or an MLflow run id.
        name: registered model name (created when new).
        bundle: the bundle that trained it (default: from the run's config as run / its logged configs).
        tracking_uri: MLflow store (default: the one a run folder logged to, else ``MLFLOW_TRACKING_URI`` or
            ``./mlflow.db``); the registry is the same store.
        alias: also point this alias (e.g. ``champion``) at the new version.
    """
    with tempfile.TemporaryDirectory(prefix="clinseg-register-") as tmp:
        if Path(run).exists():
            record = run_record(run)
            if not record.run_id:
                raise ValueError(
                    f"run folder {run} has no MLflow run id yet (its journal was never replayed); "
                    f"run: clinseg tracking sync {run}"
                )
            client = registry_client(tracking_uri or record.tracking_uri)
        else:
            client = registry_client(tracking_uri)
            record, logged = _record_from_mlflow(client, str(run), Path(tmp) / "run")
            bundle = bundle or logged
        out = export_bundle(record, Path(tmp) / "bundle", bundle=bundle)
        client.log_artifacts(record.run_id, str(out), BUNDLE_ARTIFACT)
    tags = {key: f"{value:.6g}" for key, value in record.metrics.items()}
    tags.update({"clinseg.best_epoch": str(record.best_epoch), ARTIFACT_TAG: BUNDLE_KIND})
    return create_version(
        client, name, record.run_id, BUNDLE_ARTIFACT, tags=tags, metrics=record.metrics, alias=alias,
        description=f"exported bundle of training run {record.run_name or record.run_id}",
    )  # fmt: skip


def create_version(
    client: Any,
    name: str,
    run_id: str,
    artifact: str,
    *,
    tags: Mapping[str, str],
    description: str,
    metrics: Mapping[str, float] | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """A new version of registered model ``name`` (created when new) whose source is the run's ``artifact`` path;
    ``alias`` (e.g. ``champion``) also points at it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="clinseg models (MONAI bundles, nnU-Net folders)")
    except MlflowException as error:
        if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact}"
    version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags), description=description)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    registered = RegisteredModel(name, str(version.version), run_id, source, dict(metrics or {}), alias)
    logger.info("%s", registered.summary())
    return registered
