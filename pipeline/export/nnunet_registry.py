"""An nnU-Net v2 trained-model folder registered in the MLflow Model Registry (``clinseg register-model
nnunet:PATH NAME``).

The folder is checked before anything is logged: :func:`~pipeline.inference.nnunet_folder.open_model_folder`
resolves the folds and checkpoint file, and every chosen checkpoint must load with ``weights_only=True``
(:func:`~pipeline.inference.nnunet_checkpoint.check_checkpoints_hold_only_data`). A new run of experiment
:data:`EXPERIMENT` then gets params naming the model (dataset, plans, configuration, trainer, folds, checkpoint
file, label names; nothing from images or free text) and the artifact :data:`NNUNET_ARTIFACT`\\ ``/<folder name>/``:
``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` when present, and the chosen folds' checkpoint only.
That folder is the new version's source, tagged ``clinseg.artifact=nnunet-folder``; ``models:/`` opens it as an
nnU-Net model again (:func:`pipeline.inference.model_ref.open_model`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.model_uri import ARTIFACT_TAG, NNUNET_KIND
from pipeline.export.registry import RegisteredModel, create_version, registry_client
from pipeline.inference.nnunet_checkpoint import check_checkpoints_hold_only_data
from pipeline.inference.nnunet_folder import DEFAULT_CHECKPOINT, NnunetFolder, open_model_folder
from pipeline.tracking.run_tags import RUN_TYPE_TAG, ensure_experiment
from pipeline.tracking.store import new_run_name

__all__ = ["EXPERIMENT", "NNUNET_ARTIFACT", "model_files", "model_params", "register_nnunet_folder"]

EXPERIMENT = "clinseg-models"
"""MLflow experiment of the runs that carry registered nnU-Net folders."""
NNUNET_ARTIFACT = "nnunet_model"
"""Artifact folder of such a run; the trained-model folder is logged under it by its own name."""
RUN_TYPE = "nnunet-model"
_FOLDER_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


def model_files(folder: NnunetFolder) -> dict[str, Path]:
    """Path in the artifact -> file, for each file logged: the folder's json files that exist and the chosen
    folds' checkpoints (``fold_N/<checkpoint_name>``)."""
    files = {name: folder.path / name for name in _FOLDER_FILES if (folder.path / name).is_file()}
    files.update({f"{path.parent.name}/{path.name}": path for path in folder.checkpoints})
    return files


def model_params(folder: NnunetFolder) -> dict[str, str]:
    """The run's params: ``dataset``, ``plans`` (``plans.json``), ``trainer`` and ``configuration`` (the folder's
    name, nnU-Net's ``TRAINER__PLANS__CONFIGURATION``), ``folds``, ``checkpoint_name`` and ``labels``."""
    plans = json.loads((folder.path / "plans.json").read_text())
    parts = folder.path.name.split("__")
    named = dict(zip(("trainer", "plans", "configuration"), parts)) if len(parts) == 3 else {}
    params = {
        "dataset": str(plans.get("dataset_name", "")),
        "plans": str(plans.get("plans_name", named.get("plans", ""))),
        "trainer": named.get("trainer", ""),
        "configuration": named.get("configuration", ""),
        "folds": ",".join(str(f) for f in folder.folds),
        "checkpoint_name": folder.checkpoint_name,
        "labels": json.dumps({str(value): name for value, name in folder.label_names.items()}),
    }
    return {key: value for key, value in params.items() if value}


def register_nnunet_folder(
    path: str | Path,
    name: str,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint_name: str = DEFAULT_CHECKPOINT,
    tracking_uri: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Log an nnU-Net trained-model folder as a new MLflow run and register it as a new version of ``name``.

    Args:
        path: the folder (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``), ``nnunet:`` prefix optional.
        name: registered model name (created when new).
        folds: folds to register (default: every ``fold_N`` holding ``checkpoint_name``).
        checkpoint_name: the checkpoint file of each fold (``checkpoint_final.pth``, ``checkpoint_best.pth``).
        tracking_uri: MLflow store and registry (default: ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        alias: also point this alias (e.g. ``champion``) at the new version.

    Raises:
        FileNotFoundError, ValueError: an incomplete folder, or a checkpoint holding more than data (the file
            named); raised before any MLflow run is created.
    """
    from mlflow.entities import Param

    folder = open_model_folder(path, folds, checkpoint_name)
    check_checkpoints_hold_only_data(folder.checkpoints)
    params = model_params(folder)
    client = registry_client(tracking_uri)
    experiment = ensure_experiment(client, EXPERIMENT, client.tracking_uri)
    run_name = new_run_name(f"nnunet-{params.get('dataset', 'model')}")
    run_id = client.create_run(experiment, run_name=run_name, tags={RUN_TYPE_TAG: RUN_TYPE}).info.run_id
    artifact = f"{NNUNET_ARTIFACT}/{folder.path.name}"
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        for relative, file in model_files(folder).items():
            client.log_artifact(run_id, str(file), str(Path(artifact, relative).parent))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return create_version(
        client, name, run_id, artifact, alias=alias,
        tags={ARTIFACT_TAG: NNUNET_KIND, "nnunet.folds": params["folds"], "nnunet.checkpoint_name": checkpoint_name},
        description=f"nnU-Net trained-model folder {folder.path.name} (folds {params['folds']}, {checkpoint_name})",
    )  # fmt: skip
