"""The training data's reference for QC: what a model's training cases look like, compact enough to travel in
the bundle (``qc_reference.json`` beside the checkpoint, ``models/`` in an export).

Built from the training split by :func:`build_reference` with the features of :mod:`pipeline.qc.features`:
per feature the mean, standard deviation, minimum and maximum over the cases (volumes and roughness on a log
scale), the orientations seen, the modality per input, and per structure how often it is present. The fitted
temperature and the validation cases' uncertainty (:mod:`pipeline.qc.calibration`) are added to it. No paths,
case ids or header fields are kept.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.datalist import load_datalist
from pipeline.qc.features import geometry_features, image_features, structure_features
from transforms.io.scan import LoadScand

__all__ = ["LOG_FEATURES", "REFERENCE_VERSION", "build_reference", "stats"]

REFERENCE_VERSION = 1
LOG_FEATURES = ("roughness", "volume_ml")
"""Features summarised (and compared) as natural logarithms: they vary by factors, not by offsets."""
_LOG_FLOOR = 1e-6


def stats(values: Sequence[float | None], log: bool = False) -> dict[str, float] | None:
    """``{"mean", "std", "min", "max", "n"}`` of the non-``None`` values (of their logarithms when ``log``),
    ``None`` when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if log:
        kept = [math.log(max(v, _LOG_FLOOR)) for v in kept]
    if not kept:
        return None
    array = np.asarray(kept)
    return {
        "mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
        "max": float(array.max()), "n": len(kept),
    }  # fmt: skip


def _case_record(entry: Mapping[str, Any], keys: Sequence[str], loader: LoadScand, labels: Sequence[int]) -> dict:
    data = loader(dict(entry))
    label = np.asarray(data["label"])[0]
    mask = label > 0
    first = data[keys[0]]
    geometry = geometry_features(first)
    voxel_ml = float(np.prod(geometry["spacing"])) / 1000.0
    return {
        **geometry,
        "intensity": {k: image_features(data[k], mask)[0] for k in keys},
        "structures": structure_features(label, labels, voxel_ml),
    }


def build_reference(
    datalist: str | Path,
    keys: Sequence[str],
    labels: Mapping[int, str],
    modalities: Mapping[str, str] | None = None,
    *,
    split: str = "training",
    max_cases: int | None = 100,
) -> dict[str, Any]:
    """Summarise the ``split`` cases of ``datalist`` (an evenly spaced subset of at most ``max_cases``).

    Args:
        datalist: ``dataset.json`` with entries holding ``keys`` and ``label``.
        keys: the model's input keys, the output grid's first.
        labels: label value -> structure name (background excluded).
        modalities: input key -> modality (``"CT"``, ``"MR"``) the model was trained on.

    Raises:
        ValueError: naming the datalist and case when a case cannot be read.
    """
    entries = load_datalist(datalist, split, required_keys=(*keys, "label"))
    if not entries:
        raise ValueError(f"{datalist}: split {split!r} is empty; no QC reference can be built from it")
    if max_cases is not None and len(entries) > max_cases:
        entries = [entries[i] for i in np.linspace(0, len(entries) - 1, max_cases).round().astype(int)]
    loader = LoadScand(keys=[*keys, "label"], label_keys=["label"])
    records = []
    for entry in entries:
        try:
            records.append(_case_record(entry, keys, loader, list(labels)))
        except Exception as error:
            raise ValueError(f"{datalist}: case {entry.get('case')!r} of split {split!r}: {error}") from error
    dims = len(records[0]["spacing"])
    intensity = {}
    for key in keys:
        names = records[0]["intensity"][key].keys()
        intensity[key] = {
            n: stats([r["intensity"][key][n] for r in records], log=n in LOG_FEATURES) for n in names
        }
    structures = {}
    for value, name in labels.items():
        rows = [r["structures"][int(value)] for r in records]
        present = [row for row in rows if row["volume_ml"] > 0]
        structures[str(value)] = {
            "name": name,
            "present": len(present) / len(rows),
            **{n: stats([row[n] for row in present], log=n in LOG_FEATURES) for n in rows[0]},
        }
    return {
        "version": REFERENCE_VERSION,
        "split": split,
        "cases": len(records),
        "modalities": {k: str(v).upper() for k, v in (modalities or {}).items()},
        "orientations": dict(Counter(r["orientation"] for r in records)),
        "spacing": [stats([r["spacing"][a] for r in records]) for a in range(dims)],
        "fov_mm": [stats([r["fov_mm"][a] for r in records]) for a in range(dims)],
        "intensity": intensity,
        "structures": structures,
        "temperature": 1.0,
    }
