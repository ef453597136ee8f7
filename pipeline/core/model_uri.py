"""Registered models as bundles: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` fetched from an MLflow
Model Registry as a bundle folder. :meth:`pipeline.core.bundle.Bundle.at` takes such a URI wherever it takes a
folder, so every command and ``Predictor.from_bundle`` take a registered model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.tracking_uri import resolve_tracking_uri

__all__ = ["MODEL_URI", "fetch_bundle", "is_model_uri", "parse_model_uri"]

logger = logging.getLogger(__name__)

MODEL_URI = "models:/"


def is_model_uri(text: str | Path) -> bool:
    """Whether ``text`` names a registered model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``)."""
    return str(text).startswith(MODEL_URI)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``(name, version or alias)`` of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.

    Raises:
        ValueError: any other text.
    """
    rest = str(uri)[len(MODEL_URI) :] if is_model_uri(uri) else ""
    name, sep, alias = rest.partition("@")
    if not sep:
        name, _, alias = rest.partition("/")
        if not alias.isdigit():
            alias = ""
    if not name or not alias or "/" in alias:
        raise ValueError(f"{uri!r} is not a registered-model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    return name, alias


def registry_store(tracking_uri: str | None) -> str:
    """The registry to ask, by :func:`pipeline.core.tracking_uri.resolve_tracking_uri`: ``tracking_uri``, else
    ``MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (the default store of ``clinseg train``)."""
    return resolve_tracking_uri(tracking_uri)[0]


def fetch_bundle(uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the bundle of a model version into ``dst``; returns the bundle folder.

    The version is resolved with a client on the registry (:func:`registry_store`; MLflow's ``models:/``
    download asks the process's default registry instead), then its source is downloaded from the same store.

    Raises:
        ValueError: a malformed URI, an unknown version or alias, or an artifact that is not a bundle.
    """
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version = parse_model_uri(uri)
    store = registry_store(tracking_uri)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        if version.isdigit():
            found = client.get_model_version(name, version)
        else:
            found = client.get_model_version_by_alias(name, version)
    except MlflowException as error:
        raise ValueError(f"model version {uri} not found in {store}: {error.message}") from error
    source = client.get_model_version_download_uri(name, found.version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=store))
    if not (local / "configs" / "metadata.json").is_file():
        raise ValueError(f"model version {uri} in {store} is not a bundle (no configs/metadata.json in its artifact)")
    logger.info("fetched %s (version %s) from %s", uri, found.version, store)
    return local
