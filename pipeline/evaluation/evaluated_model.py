"""The model an evaluation run is tagged with: a bundle or an nnU-Net trained-model folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.bundle import Bundle
from pipeline.inference.nnunet_folder import NNUNET_PREFIX, NnunetFolder

__all__ = ["EvaluatedModel"]


@dataclass(frozen=True)
class EvaluatedModel:
    """What an evaluation run is tagged with of its model.

    Attributes:
        name: the run name's stem (``ct_organ_resunet3d``, ``nnunet:nnUNetTrainer__nnUNetPlans__3d_fullres``).
        meta: ``name`` and ``version`` (a bundle's ``metadata.json``).
        root: the model's folder (its git commit is tagged when it is in a checkout).
    """

    name: str
    meta: Mapping[str, Any]
    root: Path

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> EvaluatedModel:
        """A bundle: its name, ``metadata.json`` and folder."""
        return cls(bundle.name, json.loads(bundle.meta_file.read_text()), bundle.root)

    @classmethod
    def of_nnunet(cls, folder: NnunetFolder) -> EvaluatedModel:
        """An nnU-Net trained-model folder: ``nnunet:<folder name>``, its dataset's name, no version."""
        name = f"{NNUNET_PREFIX}{folder.path.name}"
        return cls(name, {"name": str(folder.dataset.get("name", name)), "version": ""}, folder.path)
