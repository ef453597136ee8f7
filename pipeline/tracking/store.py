"""MLflow wiring for bundles and the CLI: the tracking-URI resolver, run names, config as run, reachability."""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from pipeline.core.atomic import atomic_write_json, atomic_write_text
from pipeline.core.tracking_uri import resolve_tracking_uri

CONFIG_AS_RUN = "config_run.json"  # the config as run, in the checkpoint folder: a run artifact


class TrackingUnavailableError(RuntimeError):
    """The configured MLflow tracking server cannot be reached."""


def default_tracking_uri(explicit: str | None = None, *, workdir: str | Path | None = None) -> str:
    """The URI alone of :func:`resolve_tracking_uri`; bundles: ``$pipeline.tracking.store.default_tracking_uri()``."""
    return resolve_tracking_uri(explicit, workdir=workdir)[0]


def new_run_name(prefix: str) -> str:
    """A unique, sortable run name such as ``ct_organ_resunet3d-20261120-231500-3fa9``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def run_name_for(ckpt_dir: str | Path, prefix: str, resume: bool = False) -> str:
    """The MLflow run name of a checkpoint folder: the stored one when resuming, else a new one (then stored).

    A resumed run logs into the same MLflow run, which a killed run left unfinished.
    """
    record = Path(ckpt_dir) / "run_name.txt"
    if resume and record.is_file():
        return record.read_text().strip()
    name = new_run_name(prefix)
    if _rank() > 0:  # only rank 0 logs to MLflow and owns the record
        return name
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, name + "\n")
    return name


def running_parser() -> ConfigParser:
    """The ``ConfigParser`` evaluating the calling config expression: the innermost one on the call stack.

    MONAI hands expressions no parser, but evaluates every one inside ``ConfigParser.get_parsed_content``
    (``ConfigWorkflow.initialize/run`` under ``monai.bundle run`` and ``clinseg`` alike).

    Raises:
        RuntimeError: called from outside a config expression.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner
        frame = frame.f_back
    raise RuntimeError("running_parser() is for bundle config expressions: no ConfigParser is evaluating one")


def export_config_as_run(folder: str | Path) -> str:
    """Write the config of the running bundle to ``folder/config_run.json``; returns the file's path.

    For a train config: ``config_as_run: $pipeline.tracking.store.export_config_as_run(@ckpt_dir)``, handed to
    :func:`experiment_params` and :func:`bundle_artifacts`. The file is the config as run (files merged in
    order, overrides applied, ``_meta_`` included), whichever runner parsed it: ``clinseg train --config
    extra.yaml --set k=v`` and ``python -m monai.bundle run --config_file "['train.yaml', 'extra.yaml']"
    --k v`` record what they ran, and a run never reads a previous run's file. Written atomically (torchrun
    ranks write the same content).
    """
    path = Path(folder) / CONFIG_AS_RUN
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, running_parser().get())
    return str(path)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(list(value) if isinstance(value, tuple) else value)[:6000]


def experiment_params(
    meta: Mapping[str, Any] | None = None, config_file: str | Path | None = None, **knobs: Any
) -> dict[str, str]:
    """MLflow params a person reads: the bundle's name and version, the named knobs (resolved; a mapping such
    as ``window`` as ``window.level``, ``window.width``) and ``config.sha256``, the digest of the config as run.

    The whole config as run is not flattened into params (hundreds of resolved ids): ``config_file``
    (:func:`export_config_as_run`) stays a run artifact (:func:`bundle_artifacts`), identified by its digest.
    """
    params: dict[str, str] = {}
    if meta:
        params["bundle.name"] = str(meta.get("name", ""))
        params["bundle.version"] = str(meta.get("version", ""))
    if config_file is not None and Path(config_file).is_file():
        params["config.sha256"] = hashlib.sha256(Path(config_file).read_bytes()).hexdigest()
    _flatten("", knobs, params)
    return params


def bundle_artifacts(bundle_root: str | Path, *extra: str | Path) -> list[str]:
    """Files logged as run artifacts: the bundle's config files as shipped and extra files such as the best
    checkpoint and the config as run (:func:`export_config_as_run`)."""
    configs = Path(bundle_root) / "configs"
    files = sorted(str(p) for p in configs.glob("*") if p.suffix in {".yaml", ".json", ".conf"})
    return files + [str(p) for p in extra]


def require_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an ``http(s)`` tracking server does not answer.

    SQLite stores need no server; their folder is created instead. ``uri`` is checked as given (resolve it
    with :func:`resolve_tracking_uri` first): the environment never overrides it.
    """
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as e:
        reason = str(getattr(e, "reason", e))
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} is not reachable ({reason}); start it (mlflow server ...) or choose "
        "another store with --tracking-uri / MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)"
    )
