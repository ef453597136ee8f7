"""A tiny nnU-Net v2 trained-model folder with seeded random weights, for tests and benchmarks (no training).

:func:`write_raw_dataset` writes synthetic phantoms in nnU-Net's raw format (``imagesTr/case_0000.nii.gz``,
``labelsTr``, ``dataset.json``); :func:`random_model_folder` runs nnU-Net's own fingerprint extraction and
planning on it, or on any raw dataset (``nnUNetv2_extract_fingerprint``, ``nnUNetv2_plan_experiment``), builds
the ``3d_fullres`` network of the plans with nnU-Net's own code and saves ``fold_*/checkpoint_final.pth`` as its
trainer would::

    RESULTS/DatasetXXX_NAME/nnUNetTrainer__nnUNetPlans__3d_fullres/{plans.json, dataset.json, fold_0/...}

Needs the ``nnunet`` extra (``nnunetv2``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.synthetic.phantoms import LABELS, make_phantom
from transforms.io.nifti_write import write_nifti

__all__ = [
    "CONFIGURATION", "TRAINER_FOLDER", "build_model_folder", "nnunet_env", "random_model_folder", "write_raw_dataset",
]  # fmt: skip

CONFIGURATION = "3d_fullres"
TRAINER_FOLDER = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"


def nnunet_env(root: Path) -> dict[str, str]:
    """This process's environment plus ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` under ``root``
    (one thread per process, as the tests and benchmarks run niced)."""
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[f"nnUNet_{name}"] = str(root / name)
    env.update({"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1"})
    return env


def write_raw_dataset(
    raw: Path, dataset_id: int, name: str, *, cases: int = 3, seed: int = 0, shape: Sequence[int] = (40, 36, 16),
    channels: Sequence[str] = ("CT",),
) -> Path:
    """Phantom CTs (oblique geometry, ``int16`` HU) and their labels as ``raw/DatasetXXX_NAME``; returns it.
    Channel *c* of ``channels`` (``dataset.json`` ``channel_names``) is the CT plus ``100 * c``."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        phantom = make_phantom(seed + i, shape=tuple(shape), spacing=(1.5, 1.5, 3.0), oblique=True)
        for c in range(len(channels)):
            image = (phantom.ct + 100 * c).astype(np.int16)
            write_nifti(image, phantom.affine, folder / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz")
        write_nifti(phantom.label.astype(np.uint8), phantom.affine, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    dataset = {
        "channel_names": {str(c): channel for c, channel in enumerate(channels)},
        "labels": {name: value for value, name in LABELS.items()},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def build_model_folder(
    root: Path, *, dataset_id: int = 901, name: str = "Phantom", folds: Sequence[int] = (0,), seed: int = 0,
    cases: int = 3, shape: Sequence[int] = (40, 36, 16), channels: Sequence[str] = ("CT",),
) -> Path:
    """:func:`write_raw_dataset` of phantoms under ``root``, then :func:`random_model_folder`; returns the
    trained-model folder."""
    env = nnunet_env(root)
    raw = write_raw_dataset(Path(env["nnUNet_raw"]), dataset_id, name, cases=cases, seed=seed, shape=shape,
                            channels=channels)  # fmt: skip
    return random_model_folder(raw, env, folds=folds, seed=seed)


def random_model_folder(
    raw: Path, env: dict[str, str], *, folds: Sequence[int] = (0,), seed: int = 0,
    configuration: Mapping[str, Any] | None = None,
) -> Path:
    """Plan the raw dataset ``raw`` (``nnUNet_raw/DatasetXXX_NAME``) with nnU-Net and save random-weight folds
    in ``nnUNet_results``; returns the trained-model folder.

    The output layer's bias favours the foreground labels a little, so the random network predicts every
    label somewhere (a test of agreement on an all-background mask would prove nothing).

    Args:
        configuration: entries merged into the plans' ``3d_fullres`` configuration before the network is built,
            nested mappings merged key by key (e.g. ``{"spacing": [2.5, 1.6, 1.6], "patch_size": [32, 64, 64],
            "architecture": {"arch_kwargs": {"n_stages": 4, ...}}}``): a network of a chosen size and patch.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    dataset_id = str(int(raw.name[len("Dataset") : len("Dataset") + 3]))
    scripts = Path(sys.executable).parent
    for tool in (["nnUNetv2_extract_fingerprint", "-np", "1"], ["nnUNetv2_plan_experiment"]):
        subprocess.run([str(scripts / tool[0]), "-d", dataset_id, *tool[1:]], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    planned = Path(env["nnUNet_preprocessed"]) / raw.name
    model = Path(env["nnUNet_results"]) / raw.name / TRAINER_FOLDER
    model.mkdir(parents=True, exist_ok=True)
    plans = json.loads((planned / "nnUNetPlans.json").read_text())
    _merge(plans["configurations"][CONFIGURATION], configuration or {})
    (model / "plans.json").write_text(json.dumps(plans, indent=1))
    shutil.copy(raw / "dataset.json", model / "dataset.json")
    dataset = json.loads((raw / "dataset.json").read_text())
    arch = plans["configurations"][CONFIGURATION]["architecture"]
    n_in, n_out = len(dataset["channel_names"]), len(dataset["labels"])
    bias = torch.zeros(n_out)
    bias[1:] = torch.linspace(0.3, 0.1, n_out - 1)
    for fold in folds:
        torch.manual_seed(seed + fold)
        net = get_network_from_plans(
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], n_in, n_out,
            deep_supervision=False,
        )  # fmt: skip
        with torch.no_grad():
            net.decoder.seg_layers[-1].bias.copy_(bias)
        (model / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {  # the entries nnUNetTrainer.save_checkpoint writes, numpy scalars in its logs included
            "network_weights": net.state_dict(),
            "init_args": {"plans": None, "configuration": CONFIGURATION, "fold": fold, "dataset_json": None,
                          "device": torch.device("cpu")},  # fmt: skip
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "logging": {"mean_fg_dice": [np.float64(0.0)], "ema_fg_dice": [np.float64(0.0)]},
            "_best_ema": np.float64(0.0),
            "current_epoch": 1,
        }
        torch.save(checkpoint, model / f"fold_{fold}" / "checkpoint_final.pth")
    return model


def _merge(target: dict, changes: Mapping[str, Any]) -> None:
    """``changes`` into ``target`` in place, nested mappings key by key."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
