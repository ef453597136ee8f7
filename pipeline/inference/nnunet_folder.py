"""nnU-Net v2 trained-model folders named as ``nnunet:PATH``: the URI, the folder's checks and its labels.

A trained-model folder is what ``nnUNetv2_train`` leaves in ``nnUNet_results``::

    .../Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres/
        plans.json  dataset.json  fold_0/checkpoint_final.pth  fold_1/...

Nothing here imports torch or nnU-Net, so the CLI checks a folder before the heavy imports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NNUNET_PREFIX", "NnunetFolder", "is_nnunet_uri", "open_model_folder"]

NNUNET_PREFIX = "nnunet:"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
_FOLD = re.compile(r"fold_(\d+|all)$")


def is_nnunet_uri(text: str | Path) -> bool:
    """Whether ``text`` names an nnU-Net trained-model folder (``nnunet:PATH``)."""
    return str(text).startswith(NNUNET_PREFIX)


@dataclass(frozen=True)
class NnunetFolder:
    """A checked trained-model folder.

    Attributes:
        path: the folder (``plans.json``, ``dataset.json``, ``fold_*/``).
        folds: the folds used (``0``.. or ``"all"``), each with ``checkpoint_name``.
        checkpoint_name: the checkpoint file of every fold (nnU-Net's ``-chk``).
        dataset: ``dataset.json`` (``channel_names``, ``labels``, optional ``regions_class_order``).
    """

    path: Path
    folds: tuple[int | str, ...]
    checkpoint_name: str
    dataset: dict[str, Any]

    @property
    def channel_names(self) -> list[str]:
        """The input channels in order (``dataset.json`` ``channel_names`` ``{"0": "CT", ...}``)."""
        channels = self.dataset.get("channel_names") or self.dataset.get("modality") or {}
        return [str(channels[k]) for k in sorted(channels, key=int)]

    @property
    def label_names(self) -> dict[int, str]:
        """Output label value -> name, background left out. A region model (``regions_class_order``) writes
        region *i* (``labels`` entries after background, in order) as value ``regions_class_order[i]``."""
        labels = {str(k): v for k, v in self.dataset["labels"].items()}
        foreground = [(name, value) for name, value in labels.items() if value not in (0, [0])]
        order = self.dataset.get("regions_class_order")
        if order is not None:
            return {int(v): name for (name, _), v in zip(foreground, order)}
        return {int(value): name for name, value in sorted(foreground, key=lambda item: int(item[1]))}

    @property
    def checkpoints(self) -> list[Path]:
        """``fold_X/checkpoint_name`` of each fold."""
        return [self.path / f"fold_{f}" / self.checkpoint_name for f in self.folds]


def open_model_folder(
    path: str | Path, folds: Sequence[int | str] | None = None, checkpoint_name: str = DEFAULT_CHECKPOINT
) -> NnunetFolder:
    """Check an nnU-Net trained-model folder (``nnunet:`` prefix optional) and pick its folds.

    Args:
        path: the folder (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``), or ``nnunet:`` and the folder.
        folds: folds to ensemble (``0``..``4`` or ``"all"``); ``None``: every ``fold_N`` holding
            ``checkpoint_name``, as ``nnUNetv2_predict`` finds them (``fold_all`` only when named).
        checkpoint_name: the checkpoint file in each fold folder.

    Raises:
        FileNotFoundError: no such folder, no ``plans.json`` or ``dataset.json``, a fold folder or checkpoint
            missing (the path named, and the checkpoints the fold does have).
        ValueError: a ``dataset.json`` without ``labels`` or ``channel_names``, a fold that is not a number or
            ``all``.
    """
    text = str(path)
    folder = Path(text[len(NNUNET_PREFIX) :] if is_nnunet_uri(text) else text)
    if not folder.is_dir():
        raise FileNotFoundError(f"nnU-Net model folder {folder}: no such folder")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} is not an nnU-Net trained-model folder: {name} is missing (expected "
                "nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION with plans.json, dataset.json, fold_*/)"
            )
    dataset = json.loads((folder / "dataset.json").read_text())
    if "labels" not in dataset or not (dataset.get("channel_names") or dataset.get("modality")):
        raise ValueError(f"{folder / 'dataset.json'}: needs 'labels' and 'channel_names' (nnU-Net v2 format)")
    if folds is None:
        fold_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and _FOLD.match(p.name))
        found = sorted(int(p.name[5:]) for p in fold_dirs if p.name != "fold_all" and (p / checkpoint_name).is_file())
        if not found:
            have = "; ".join(f"{p.name}/: {', '.join(_checkpoints(p))}" for p in fold_dirs) or "no fold_N/ folders"
            raise FileNotFoundError(f"{folder}: no fold_N/{checkpoint_name}: no such checkpoint ({have})")
        chosen: tuple[int | str, ...] = tuple(found)
    else:
        chosen = tuple(_fold(f, folder) for f in folds)
    for fold in chosen:
        fold_dir = folder / f"fold_{fold}"
        if not fold_dir.is_dir():
            raise FileNotFoundError(f"{folder}: fold {fold} is missing (no {fold_dir.name}/)")
        if not (fold_dir / checkpoint_name).is_file():
            have = ", ".join(_checkpoints(fold_dir))
            raise FileNotFoundError(f"{fold_dir / checkpoint_name}: no such checkpoint ({fold_dir.name}/: {have})")
    return NnunetFolder(folder, chosen, checkpoint_name, dataset)


def _fold(value: int | str, folder: Path) -> int | str:
    text = str(value)
    if text == "all":
        return text
    if not text.isdigit():
        raise ValueError(f"{folder}: fold {value!r} is neither a number nor 'all'")
    return int(text)


def _checkpoints(fold_dir: Path) -> list[str]:
    """The ``*.pth`` files of a fold folder (``["no checkpoints"]`` when none)."""
    return sorted(p.name for p in fold_dir.glob("*.pth")) or ["no checkpoints"]
