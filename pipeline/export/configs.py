"""The configs of an exported bundle: each one standalone (``common.yaml`` merged in), with the run's settings.

``train.yaml`` is the config as run (``config_run.json`` of the checkpoint folder: files merged, overlays and
overrides applied); ``inference.yaml`` and ``evaluate.yaml`` are the shipped ones merged over ``common.yaml``,
with every shared knob (grid, patch, network, preprocessing, ...) taken from the run. Machine-specific keys
(data, checkpoint and MLflow locations) keep the shipped values, so no local path travels with the bundle.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser
from monai.bundle.utils import merge_kv

from pipeline.core.bundle import COMMON, CONFIG_SUFFIXES, Bundle

__all__ = [
    "EXPORTED_CKPT_DIR",
    "LOCAL_KEYS",
    "MONAI_LABEL_POST",
    "MONAI_LABEL_PRE",
    "exported_configs",
    "other_config_files",
    "write_yaml",
]

LOCAL_KEYS = (
    "bundle_root", "dataset_dir", "datalist_file", "output_dir", "ckpt_dir", "tracking_uri", "run_name",
    "resume", "tracking_journal", "config_as_run", "fold",
)  # fmt: skip
"""Keys naming this machine's folders or the run's MLflow store: shipped values are kept, the run's dropped."""
EXPORTED_CKPT_DIR = "$@bundle_root + '/models'"
"""An exported bundle's checkpoint folder: its own ``models/`` (the shipped default is ``runs/<name>`` under
the working directory)."""
PORTABLE = {"dataset_dir": "data"}
"""What an exported config holds instead of an absolute path of the machine that planned or trained it."""

MONAI_LABEL_POST = "post_transforms"
"""MONAI Label's ``BundleInferTask`` prefers this key to ``postprocessing`` and feeds it logits, not the
probabilities ``postprocessing`` takes (clinseg's Predictor and the evaluator apply the softmax first)."""

MONAI_LABEL_PRE = "pre_transforms"
"""MONAI Label's ``BundleInferTask`` prefers this key to ``preprocessing``. It adds the request's ``image_path``
(a string) to the data, and MONAI's ``Spacingd`` updates every ``image_*`` entry as a meta dict for NIfTI inputs
(``AttributeError: 'str' object has no attribute 'update'``), so the path is kept aside around the bundle's
preprocessing and put back for MONAI Label's writer."""
_PATH, _ASIDE = "image_path", "clinseg_image_path"
_MONAI_LABEL = {
    MONAI_LABEL_PRE: {
        "_target_": "Compose",
        "transforms": "$@monai_label#path_aside + @preprocessing_transforms + @monai_label#path_back",
    },
    MONAI_LABEL_POST: {
        "_target_": "Compose",
        "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}, "@postprocessing"],
    },  # a region bundle (output_activation: sigmoid) gets sigmoid instead: _monai_label
    "monai_label": {
        "path_aside": [
            {"_target_": "CopyItemsd", "keys": _PATH, "names": _ASIDE, "allow_missing_keys": True},
            {"_target_": "DeleteItemsd", "keys": _PATH},
        ],
        "path_back": [
            {"_target_": "CopyItemsd", "keys": _ASIDE, "names": _PATH, "allow_missing_keys": True},
            {"_target_": "DeleteItemsd", "keys": _ASIDE},
        ],
    },
}

_MAIN = ("train", "inference", "evaluate")


def _merged(files: list[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Files merged in order as ``monai.bundle run`` merges a list (``+key`` and ``a#b`` ids), over ``base``."""
    parser = ConfigParser(config=copy.deepcopy(dict(base or {})))
    for file in files:
        for key, value in ConfigParser.load_config_file(file).items():
            merge_kv(parser, key, value)
    config = parser.get()
    config.pop("_meta_", None)
    return config


def _with_run(config: dict[str, Any], run: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """``config`` with the run's value of each of ``keys`` that the run has (local keys and the run's
    ``imports``, which hold the training-only modules, excepted)."""
    for key in keys:
        if key in run and key not in (*LOCAL_KEYS, "imports"):
            config[key] = copy.deepcopy(run[key])
    return config


def _shipped_local(config: dict[str, Any], shipped: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with its local keys reset to the shipped values (dropped when the shipped config lacks them),
    an absolute path among them (a planned bundle's ``dataset_dir``) made portable."""
    for key in LOCAL_KEYS:
        if key in shipped:
            config[key] = copy.deepcopy(shipped[key])
        else:
            config.pop(key, None)
    return _portable(config)


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without this machine's folders: a local key holding an absolute path gets
    :data:`PORTABLE`'s relative default (given again at run time, e.g. ``--dataset_dir DATA``)."""
    for key in LOCAL_KEYS:
        value = config.get(key)
        if isinstance(value, str) and not value.startswith(("$", "@")) and Path(value).is_absolute():
            config[key] = PORTABLE.get(key, ".")
    return config


def exported_configs(bundle: Bundle, config_as_run: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The standalone configs of the export: ``{"train": ..., "inference": ..., "evaluate": ...}`` (those the
    bundle has), each a plain dict ready for :func:`write_yaml`.

    Args:
        bundle: the bundle the run trained (its shipped configs).
        config_as_run: the run's ``config_run.json``; ``None`` exports the shipped configs with their defaults.
    """
    configs_dir = bundle.root / "configs"
    common = bundle.config_files(COMMON) if (configs_dir / f"{COMMON}.yaml").is_file() else []  # with its base
    shared = list(_merged(common)) if common else []
    shipped_train = _merged(bundle.config_files("train"))
    run = dict(config_as_run) if config_as_run else shipped_train
    train = _shipped_local({k: copy.deepcopy(v) for k, v in run.items() if k != "_meta_"}, shipped_train)
    train["ckpt_dir"] = EXPORTED_CKPT_DIR
    out = {"train": train}
    if bundle.has_config("inference"):
        inference = _portable(_with_run(_merged(bundle.config_files("inference")), run, shared))
        out["inference"] = {
            **inference,
            **_monai_label(bundle, inference.get("output_activation", "softmax")),
        }
    if bundle.has_config("evaluate"):
        out["evaluate"] = _merged(bundle.config_files("evaluate", with_common=False), base=train)
    return out


def _monai_label(bundle: Bundle, activation: str) -> dict[str, Any]:
    """MONAI Label's pre/post transforms for a bundle whose logits become probabilities by ``activation``
    (``output_activation``: softmax over labels, or sigmoid per region), as Predictor applies it."""
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(
            f"{bundle.root / 'configs'}: output_activation must be softmax or sigmoid, got {activation!r}"
        )
    config = copy.deepcopy(_MONAI_LABEL)
    config[MONAI_LABEL_POST]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", activation: True}
    return config


def other_config_files(bundle: Bundle) -> list[Path]:
    """Files of ``configs/`` copied as they are: overlays (``multi_gpu_train.yaml``...), ``logging.conf``, a
    planned bundle's ``plan.json`` and ``fingerprint.json``; not the merged ones nor ``metadata.json``."""
    skip = {COMMON, *_MAIN, "metadata"}
    return sorted(
        p for p in (bundle.root / "configs").iterdir()
        if p.is_file() and p.stem not in skip and p.suffix in {*CONFIG_SUFFIXES, ".conf"}
    )  # fmt: skip


class _Dumper(yaml.SafeDumper):
    """Lists of scalars in flow style (``[64, 64, 32]``), everything else in block style."""


_Dumper.add_representer(
    list,
    lambda dumper, items: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", items, flow_style=all(not isinstance(i, (dict, list)) for i in items)
    ),
)


def write_yaml(config: Mapping[str, Any], path: str | Path, header: str) -> Path:
    """Write ``config`` as YAML under a ``# ``-commented ``header``."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    body = yaml.dump(dict(config), Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    path = Path(path)
    path.write_text(comment + body)
    return path
