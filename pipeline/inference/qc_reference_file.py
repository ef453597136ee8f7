"""Where a model's QC reference lives: ``qc_reference.json`` (the training data's reference, the fitted
temperature, validation uncertainty norms: :mod:`pipeline.qc.reference`) beside its checkpoint or in ``models/``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["QC_REFERENCE_NAME", "find_qc_reference"]

QC_REFERENCE_NAME = "qc_reference.json"


def find_qc_reference(bundle_root: Path, checkpoints: Sequence[Path]) -> dict[str, Any] | None:
    """The ``qc_reference.json`` of a model: beside its first checkpoint (a training run's folder), else in the
    bundle's ``models/``; ``None`` when there is none. An unreadable one is an error naming the file."""
    for path in ([checkpoints[0].parent / QC_REFERENCE_NAME] if checkpoints else []) + [
        bundle_root / "models" / QC_REFERENCE_NAME
    ]:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError as e:
                raise ValueError(f"{path}: not a readable QC reference ({e})") from e
    return None
