"""A model argument opened as what it names: a bundle folder, an nnU-Net trained-model folder (``nnunet:PATH``),
or a registered model (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``) whose artifact is either.

This is where a registered model turns into an nnU-Net model: its artifact, fetched into a temporary folder
(:func:`pipeline.core.model_uri.open_fetched`, removed with the returned object), is an nnU-Net folder when its
version is tagged ``clinseg.artifact=nnunet-folder`` or it holds ``plans.json`` and no ``configs/metadata.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.core.bundle import Bundle
from pipeline.core.model_uri import NNUNET_KIND, ModelArtifact, bundle_folder, is_model_uri, open_fetched
from pipeline.inference.nnunet_folder import (
    DEFAULT_CHECKPOINT,
    NnunetFolder,
    is_nnunet_uri,
    open_model_folder,
)
from pipeline.inference.zoo_bundle import open_bundle

__all__ = ["is_nnunet_artifact", "open_model"]


def is_nnunet_artifact(artifact: ModelArtifact) -> bool:
    """Whether a fetched model version is an nnU-Net trained-model folder (by its tag, else by its files)."""
    bundle = (artifact.path / "configs" / "metadata.json").is_file()
    return artifact.kind == NNUNET_KIND or ((artifact.path / "plans.json").is_file() and not bundle)


def open_model(
    model: str | Path,
    *,
    tracking_uri: str | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint_name: str = DEFAULT_CHECKPOINT,
) -> Bundle | NnunetFolder:
    """The checked nnU-Net folder or the bundle that ``model`` names.

    Args:
        model: ``nnunet:PATH``, ``models:/...`` or a bundle folder (model-zoo layout or clinseg's:
            :func:`pipeline.inference.zoo_bundle.open_bundle`).
        tracking_uri: the registry of a ``models:/`` URI (default: ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        folds, checkpoint_name: an nnU-Net model's folds and checkpoint file
            (:func:`pipeline.inference.nnunet_folder.open_model_folder`); unused for a bundle.

    Raises:
        FileNotFoundError, ValueError: as :func:`~pipeline.inference.nnunet_folder.open_model_folder`,
            :meth:`Bundle.at <pipeline.core.bundle.Bundle.at>` and :func:`pipeline.core.model_uri.fetch_artifact`.
    """
    if is_nnunet_uri(model):
        return open_model_folder(model, folds, checkpoint_name)
    if not is_model_uri(model):
        return open_bundle(model)

    def opener(artifact: ModelArtifact) -> Bundle | NnunetFolder:
        if is_nnunet_artifact(artifact):
            return open_model_folder(artifact.path, folds, checkpoint_name)
        return Bundle(bundle_folder(artifact).resolve())

    return open_fetched(str(model), tracking_uri, opener)
