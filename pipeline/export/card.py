"""An exported bundle's ``metadata.json`` (measured metrics, version, changelog, pinned packages) and
``docs/README.md`` (how the model was trained and what it measured)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser

from pipeline.export.record import KEY_METRIC, RunRecord

__all__ = ["export_version", "exported_metadata", "exported_readme", "license_text"]

_TRAINING_KNOBS = (
    "network_name", "network_args", "spacing", "roi_size", "window", "max_epochs", "val_interval", "batch_size",
    "samples_per_volume", "learning_rate", "weight_decay", "seed", "amp", "time_budget_s",
)  # fmt: skip


def _installed(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def export_version(source_version: str, record: RunRecord) -> str:
    """``<bundle version>+<run stamp>``, e.g. ``0.1.2+20261130.184515.0729`` (PEP 440 local label of the
    run's timestamp and suffix), or the bundle version alone for a run without a name."""
    stamp = re.findall(r"(\d{8})-(\d{6})-([0-9a-f]+)$", record.run_name)
    return f"{source_version}+{'.'.join(stamp[0])}" if stamp else source_version


def _metric_text(record: RunRecord) -> str:
    best = record.metrics.get(KEY_METRIC)
    of = f" of {record.epochs}" if record.epochs else ""
    return (
        f"best {KEY_METRIC} {best:.4f} at epoch {record.best_epoch}{of}"
        if best is not None
        else "no validation metric"
    )


def exported_metadata(source: Mapping[str, Any], record: RunRecord, version: str) -> dict[str, Any]:
    """The shipped ``metadata.json`` with the run's facts: ``version`` and a changelog entry, the measured
    ``eval_metrics`` and their source, the running MONAI/PyTorch/NumPy versions and ``required_packages_version``
    naming the installed ``clinseg`` (the only package loading needs beyond MONAI's)."""
    meta = copy.deepcopy(dict(source))
    meta["version"] = version
    meta["changelog"] = {
        version: f"exported from {record.source()}: {_metric_text(record)}",
        **meta.get("changelog", {}),
    }
    meta["monai_version"] = monai.__version__
    meta["pytorch_version"] = torch.__version__.split("+")[0]
    meta["numpy_version"] = np.__version__
    packages = dict(meta.get("required_packages_version", {}))
    for name in list(packages):
        packages[name] = _installed(name) or packages[name]
    packages["clinseg"] = _installed("clinseg") or packages.get("clinseg", "0.1.0")
    meta["required_packages_version"] = packages
    meta["eval_metrics"] = {k: round(v, 4) for k, v in record.metrics.items()}
    meta["eval_metrics_source"] = f"validation split during {record.source()} ({_metric_text(record)})"
    meta["training_run"] = {
        "run_name": record.run_name, "mlflow_run_id": record.run_id, "best_epoch": record.best_epoch,
        "epochs": record.epochs,
    }  # fmt: skip
    return meta


def license_text(meta: Mapping[str, Any]) -> str:
    """A LICENSE for a bundle that ships none (a planned bundle): its metadata's licence statement."""
    return (
        f"{meta.get('name', 'this model')}: {meta.get('license', 'no licence stated')}\n"
        f"{meta.get('copyright', '')}\n"
    )


def _resolved(config: Mapping[str, Any], keys: tuple[str, ...]) -> list[tuple[str, Any]]:
    """``keys`` of ``config`` as MONAI resolves them (``'$len(@channels)'`` -> 2); a value that needs what
    the export cannot build (a dataset, a GPU) is shown as written."""
    parser = ConfigParser(copy.deepcopy(dict(config)))
    values = []
    for key in (k for k in keys if k in config):
        try:
            values.append((key, parser.get_parsed_content(key, instantiate=False)))
        except Exception:  # noqa: BLE001 - any failure to evaluate: the value as written is still true
            values.append((key, config[key]))
    return values


def exported_readme(meta: Mapping[str, Any], record: RunRecord, train_config: Mapping[str, Any]) -> str:
    """``docs/README.md``: what the model is, how it was trained (the knobs of the config as run, resolved),
    what it measured, and the commands that run it."""
    knobs = _resolved(train_config, _TRAINING_KNOBS)
    lines = [
        f"# {meta.get('name', 'bundle')} {meta['version']}",
        "",
        str(meta.get("description", meta.get("task", ""))),
        "",
        "Exported by `clinseg export` from "
        + record.source(quote="`")
        + (f" (MLflow run `{record.run_id}`)" if record.run_id else "")
        + ". Self-contained: `configs/` hold the configs as run, each standalone; `models/model.pt` the weights "
        "(`torch.load(weights_only=True)`), `models/model.ts` the TorchScript network.",
        "",
        "## How it was trained",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in knobs],
        f"| epochs trained | {record.epochs or 'unknown'} |",
        "",
        "The full config as run is `configs/train.yaml` (train again: `clinseg train . --dataset-dir DATA`).",
        "",
        "## Measured (validation split, best epoch)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in sorted(record.metrics.items())],
        "",
        f"Best epoch: {record.best_epoch}. These are the run's own validation numbers, not a held-out test.",
        "",
        "## Use",
        "",
        "Needs the installed `clinseg` package (`metadata.json` `required_packages_version`).",
        "",
        "- `clinseg predict BUNDLE --input PATIENTS --output OUT` (weights: `models/model.pt`)",
        (
            "- from this folder: `python -m monai.bundle run --config_file configs/inference.yaml "
            "--dataset_dir DATA` (a `dataset.json` with a `test` split; label maps in `eval/`)"
        ),
        "- MONAI Label: put the folder in the app's model folder; `BundleInferTask` serves it as is",
        "",
        f"Intended use: {meta.get('intended_use', 'research use only, not for diagnosis')}",
        "",
    ]
    return "\n".join(lines)
