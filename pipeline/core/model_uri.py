"""Registered models: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` fetched from an MLflow Model Registry.

A version's artifact is a MONAI bundle or an nnU-Net trained-model folder (its :data:`ARTIFACT_TAG` says which).
:meth:`pipeline.core.bundle.Bundle.at` takes a bundle's URI wherever it takes a folder;
:func:`pipeline.inference.model_ref.open_model` opens either kind, so every command and ``Predictor.from_bundle``
take a registered model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.core.tracking_uri import resolve_tracking_uri

__all__ = [
    "ARTIFACT_TAG", "BUNDLE_KIND", "MODEL_URI", "NNUNET_KIND", "ModelArtifact", "bundle_folder", "fetch_artifact",
    "fetch_bundle", "is_model_uri", "open_fetched", "parse_model_uri",
]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_URI = "models:/"
ARTIFACT_TAG = "clinseg.artifact"
"""Model-version tag naming what the version's artifact is: :data:`BUNDLE_KIND` or :data:`NNUNET_KIND`."""
BUNDLE_KIND = "monai-bundle"
NNUNET_KIND = "nnunet-folder"

T = TypeVar("T")


@dataclass(frozen=True)
class ModelArtifact:
    """A model version's artifact, downloaded.

    Attributes:
        uri: the ``models:/`` URI it was fetched by.
        store: the registry it came from.
        path: the downloaded folder.
        kind: the version's :data:`ARTIFACT_TAG` (``""`` when untagged).
    """

    uri: str
    store: str
    path: Path
    kind: str


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


def fetch_artifact(uri: str, dst: str | Path, tracking_uri: str | None = None) -> ModelArtifact:
    """Download the artifact of a model version into ``dst``, whatever it holds.

    The version is resolved with a client on the registry (:func:`registry_store`; MLflow's ``models:/``
    download asks the process's default registry instead), then its source is downloaded from the same store.

    Raises:
        ValueError: a malformed URI, an unknown version or alias.
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
    logger.info("fetched %s (version %s) from %s", uri, found.version, store)
    return ModelArtifact(str(uri), store, local, (found.tags or {}).get(ARTIFACT_TAG, ""))


def bundle_folder(artifact: ModelArtifact) -> Path:
    """The bundle folder of a fetched artifact.

    Raises:
        ValueError: the artifact is not a bundle (an nnU-Net model folder named as such).
    """
    if (artifact.path / "configs" / "metadata.json").is_file():
        return artifact.path
    if artifact.kind == NNUNET_KIND:
        raise ValueError(f"model version {artifact.uri} in {artifact.store} is an nnU-Net trained-model folder, not "
                         "a bundle: clinseg predict, evaluate and serve (and Predictor.from_bundle) take it")  # fmt: skip
    raise ValueError(
        f"model version {artifact.uri} in {artifact.store} is not a bundle (no configs/metadata.json in its artifact)"
    )


def fetch_bundle(uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the bundle of a model version into ``dst`` (:func:`fetch_artifact`); returns the bundle folder.

    Raises:
        ValueError: a malformed URI, an unknown version or alias, or an artifact that is not a bundle.
    """
    return bundle_folder(fetch_artifact(uri, dst, tracking_uri))


def open_fetched(uri: str, tracking_uri: str | None, opener: Callable[[ModelArtifact], T]) -> T:
    """``opener`` of a model version's artifact, fetched into a new temporary folder that is removed with the
    object ``opener`` returns (at once when fetching or opening fails)."""
    folder = tempfile.mkdtemp(prefix="clinseg-model-")
    try:
        opened = opener(fetch_artifact(uri, folder, tracking_uri))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(opened, shutil.rmtree, folder, True)
    return opened
