"""MLflow run tags that make a run findable: bundle, code version, data version, device and library versions;
the experiment tag that opens an experiment in MLflow 3's model-training view, and experiments made with it.

The dataset fingerprint hashes the datalist's split membership, relative file paths and file sizes, never
file contents or the ``case`` field, so it identifies a dataset version without carrying patient identifiers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.datalist import path_keys, read_datalist

logger = logging.getLogger(__name__)

RUN_TYPE_TAG = "clinseg.run_type"
CKPT_DIR_TAG = "clinseg.ckpt_dir"
TRAIN_RUN_TAG = "clinseg.train_run_id"
FOLD_TAG = "fold"
# MLflow 3.1-3.x UIs read this experiment tag to choose the experiment's view; without it, they infer one and may
# show a GenAI "Traces / Latency" dashboard that files training runs under "Evaluations"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI ignores that tag: a GenAI / Model training switch, from the page's ``workflowType`` query
# (else the browser's last choice, GenAI by default), picks the view, so the links clinseg prints carry it
WORKFLOW_QUERY = "workflowType=machine_learning"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/, transforms/, networks/


def _files_of(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        yield path


def dataset_fingerprint(datalist_file: str | Path) -> str:
    """sha256 over the sorted lines ``split<TAB>relative/path<TAB>size`` of every file a datalist references.

    Folders (DICOM series) contribute each file inside them. Paths are relative to the datalist's folder, so
    the fingerprint survives moving the dataset; a missing file contributes size ``-1``.

    Args:
        datalist_file: an MSD-style ``dataset.json``.

    Returns:
        ``"sha256:<64 hex digits>"``.
    """
    datalist_file = Path(datalist_file)
    content = read_datalist(datalist_file)
    root = datalist_file.parent.resolve()
    lines: set[str] = set()
    for split, entries in content.items():
        if not isinstance(entries, list):
            continue
        for raw in entries:
            entry = {"image": raw} if isinstance(raw, str) else raw
            if not isinstance(entry, Mapping):
                continue
            for key in path_keys(content):
                value = entry.get(key)
                if not isinstance(value, str):
                    continue
                target = (root / value).resolve()
                files = list(_files_of(target))
                if not files:
                    lines.add(f"{split}\t{os.path.relpath(target, root)}\t-1")
                for file in files:
                    lines.add(f"{split}\t{os.path.relpath(file, root)}\t{file.stat().st_size}")
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    return f"sha256:{digest}"


def git_commit(path: str | Path = ".") -> str | None:
    """The commit hash of the git checkout holding ``path``, ``+dirty`` if modified; ``None`` outside git."""
    cwd = Path(path).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def clinseg_commit() -> str | None:
    """The commit of the running clinseg code: its git checkout's, else the commit pip recorded when it was
    installed from git (``direct_url.json``); ``None`` when neither is known."""
    commit = git_commit(_PACKAGE_ROOT)
    if commit:
        return commit
    try:
        direct_url = importlib.metadata.distribution("clinseg").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    return json.loads(direct_url or "{}").get("vcs_info", {}).get("commit_id")


def clinseg_version() -> str | None:
    try:
        return importlib.metadata.version("clinseg")
    except importlib.metadata.PackageNotFoundError:
        return None


def set_experiment_kind(client: Any, experiment_id: str) -> None:
    """Tag the experiment for MLflow 3's model-training view, unless someone chose a kind already."""
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created when new (a SQLite store keeps its artifacts in ``mlruns/`` beside
    the database, as MONAI's ``MLFlowHandler``), tagged for MLflow 3's model-training view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        found = experiment.experiment_id
    else:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
        found = client.create_experiment(name, artifact_location=location)
    set_experiment_kind(client, found)
    return found


def run_page_url(tracking_uri: str | None, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or one of its runs) in the model-training view; ``None`` for a store
    without a UI address (SQLite: open it with ``mlflow ui``, then choose "Model training")."""
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return None
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{tracking_uri.rstrip('/')}/#/{page}?{WORKFLOW_QUERY}"


def run_tags(
    meta: Mapping[str, Any] | None = None,
    *,
    datalist_file: str | Path | None = None,
    bundle_root: str | Path | None = None,
    device: Any = None,
    run_type: str = "training",
    fold: int | None = None,
    ckpt_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Tags for a training or evaluation run, callable from bundle configs.

    Example (train.yaml): ``tags: $pipeline.tracking.run_tags.run_tags(@_meta_, datalist_file=@datalist_file,
    bundle_root=@bundle_root, device=@device, ckpt_dir=@ckpt_dir)``.

    Args:
        meta: the bundle's ``metadata.json`` content (``@_meta_``): name and version.
        datalist_file: the datalist trained or evaluated on, fingerprinted by :func:`dataset_fingerprint`.
        bundle_root: the bundle's folder; its git commit is tagged ``bundle.git_commit`` when it is in a checkout.
            ``git.commit`` is always the commit of the clinseg code (:func:`clinseg_commit`), left out when unknown.
        device: the torch device the run used.
        run_type: ``"training"`` or ``"evaluation"``.
        fold: cross-validation fold, tagged as ``fold`` when given.
        ckpt_dir: checkpoint folder, so an evaluation can find the training run of a checkpoint.
        extra: further tags.
    """
    import monai
    import torch

    tags = {
        RUN_TYPE_TAG: run_type,
        "bundle.name": str((meta or {}).get("name", "")),
        "bundle.version": str((meta or {}).get("version", "")),
        "device": str(device if device is not None else "cpu"),
        "torch.version": torch.__version__,
        "monai.version": monai.__version__,
    }
    known = {
        "git.commit": clinseg_commit(),
        "clinseg.version": clinseg_version(),
        "bundle.git_commit": git_commit(bundle_root) if bundle_root is not None else None,
    }
    tags.update({key: value for key, value in known.items() if value})
    if datalist_file is not None:
        tags["dataset.fingerprint"] = dataset_fingerprint(datalist_file)
    if fold is not None:
        tags[FOLD_TAG] = str(int(fold))
    if ckpt_dir is not None:
        tags[CKPT_DIR_TAG] = str(Path(ckpt_dir).resolve())
    for key, value in (extra or {}).items():
        tags[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return tags
