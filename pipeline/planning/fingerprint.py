"""Dataset fingerprint: what a plan is made from, measured on a datalist's training cases.

Per case the channels and label are loaded as the bundle will load them (``LoadScand``, the other channels
resampled onto the first's grid, then RAS), and the fingerprint keeps, as nnU-Net's does: voxel spacing and
shape in RAS axis order, per-channel intensity statistics *inside the foreground* (label > 0, from up to
``samples_per_case`` voxels a case), the share of non-zero voxels (a skull-stripped or cropped MR has a zero
background) and of voxels at the image minimum (a constant background that is not zero), and per-class voxel counts and volumes.
Cases whose channels come on different grids (shape, or a voxel corner placed more than
:data:`GRID_TOLERANCE_MM` apart) are listed: resampling onto the first channel's grid assumes they are aligned
in scanner space, which ``clinseg register`` can make sure of. Written as ``fingerprint.json`` in a planned
bundle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose, Orientationd, ResampleToMatchd

from pipeline.core.datalist import load_datalist, read_datalist
from transforms.io.scan import LoadScand

__all__ = ["FingerprintError", "dataset_fingerprint", "intensity_statistics"]

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 50.0, 99.5)
PROGRESS_S = 5.0  # seconds between progress lines
GRID_TOLERANCE_MM = 1e-3


class FingerprintError(ValueError):
    """A dataset that cannot be planned from (no channels, no labelled case, unreadable case)."""


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """Mean, std, min, max and the 0.5 / 50 / 99.5 percentiles of a 1D sample (float64)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    p = np.percentile(values, PERCENTILES)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "p00_5": float(p[0]),
        "median": float(p[1]),
        "p99_5": float(p[2]),
    }


def _loader(channels: Sequence[str]) -> tuple[LoadScand, Compose]:
    """The loading step, and the rest: other channels onto the first's grid, then RAS."""
    keys = [*channels, "label"]
    steps: list = []
    if len(channels) > 1:
        steps.append(ResampleToMatchd(keys=list(channels[1:]), key_dst=channels[0], mode="bilinear"))
    steps.append(Orientationd(keys=keys, axcodes="RAS", labels=None))
    return LoadScand(keys=keys, label_keys=["label"]), Compose(steps)


def _grids_differ(data: Mapping[str, Any], channels: Sequence[str]) -> bool:
    """True when a channel's shape differs from the first's, or its grid corners lie elsewhere (> 1e-3 mm)."""
    reference = data[channels[0]]
    shape = np.asarray(reference.shape[1:])
    corners = (
        np.array([[*c, 1.0] for c in np.ndindex(*(2,) * len(shape))]).T * np.append(shape - 1, 1)[:, None]
    )
    for key in channels[1:]:
        if tuple(data[key].shape[1:]) != tuple(shape):
            return True
        moved = (np.asarray(data[key].affine) - np.asarray(reference.affine)) @ corners
        if np.abs(moved).max() > GRID_TOLERANCE_MM:
            return True
    return False


def _case(
    entry: Mapping[str, Any],
    channels: Sequence[str],
    loader: tuple[LoadScand, Compose],
    samples: int,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        data = loader[0](dict(entry))
        grids_differ = _grids_differ(data, channels)
        data = loader[1](data)
    except Exception as error:  # MONAI wraps the loader's named error: surface the root cause
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        raise FingerprintError(f"case {entry['case']!r} cannot be loaded: {root}") from error
    label = np.asarray(data["label"])[0]
    reference = data[channels[0]]
    if label.shape != tuple(reference.shape[1:]):
        raise FingerprintError(
            f"case {entry['case']!r}: label {entry['label']} has shape {label.shape}, its image "
            f"{entry[channels[0]]} {tuple(reference.shape[1:])} after loading (different grids)"
        )
    values, counts = np.unique(label, return_counts=True)
    spacing = [float(s) for s in np.asarray(reference.pixdim)[: label.ndim]]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    foreground = np.flatnonzero(label.ravel() > 0)
    picked = (
        rng.choice(foreground, size=min(samples, foreground.size), replace=False)
        if foreground.size
        else foreground
    )
    sampled: dict[str, np.ndarray] = {}
    nonzero: dict[str, float] = {}
    background: dict[str, float] = {}
    for key in channels:
        image = np.asarray(data[key], dtype=np.float32)  # LoadScand has rejected non-finite voxels
        flat = image.reshape(image.shape[0], -1)
        sampled[key] = flat[:, picked].ravel()
        nonzero[key] = float(np.count_nonzero(flat) / flat.size)
        background[key] = float(np.mean(flat == flat.min(axis=1, keepdims=True)))
    record = {
        "case": entry["case"],
        "spacing": spacing,
        "shape": list(label.shape),
        "nonzero_fraction": nonzero,
        "background_fraction": background,
        "class_voxels": {str(int(v)): int(n) for v, n in zip(values, counts) if v > 0},
        "voxel_ml": voxel_ml,
        "channel_grids_differ": grids_differ,
    }
    return record, sampled


def _channels(content: Mapping[str, Any], path: Path) -> dict[str, str]:
    channels = content.get("channels")
    if isinstance(channels, Mapping) and channels:
        return {str(k): str(v).upper() for k, v in channels.items()}
    modality = content.get("modality")
    if (
        isinstance(modality, Mapping) and len(modality) == 1
    ):  # a plain MSD-style datalist with `image` entries
        return {"image": str(next(iter(modality.values()))).upper().replace("MRI", "MR")}
    raise FingerprintError(
        f"{path}: no `channels` map (name -> modality); import the dataset with `clinseg import` first"
    )


def _labels(content: Mapping[str, Any], observed: set[int], path: Path) -> dict[int, str]:
    names = {int(k): str(v) for k, v in (content.get("labels") or {}).items() if int(k) > 0}
    unnamed = sorted(observed - set(names))
    if unnamed:
        raise FingerprintError(
            f"{path}: label value(s) {unnamed} occur in the training labels but `labels` lacks them"
        )
    if not observed:
        raise FingerprintError(f"{path}: no foreground label occurs in the training cases (every label is 0)")
    top = max(names)
    return {v: names.get(v, f"label_{v}") for v in range(1, top + 1)}


def dataset_fingerprint(
    datalist: str | Path,
    split: str = "training",
    *,
    max_cases: int | None = None,
    samples_per_case: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure ``split`` of an imported datalist (``clinseg import``).

    Args:
        datalist: the ``dataset.json`` with ``channels`` (name -> modality) and ``labels``.
        split: the cases to measure (the training split: never the held-out test cases).
        max_cases: measure an evenly spaced subset of at most this many cases (``None``: all).
        samples_per_case: foreground voxels sampled per case for intensity statistics.
        seed: sampling seed.

    Returns:
        ``{"channels", "labels", "cases", "spacing", "shape", "intensity", "nonzero_fraction", "background_fraction", "classes",
        "channel_grids_differ", "per_case"}``; spacings in mm and shapes in voxels, RAS axis order;
        ``channel_grids_differ`` lists the cases whose channels lie on different grids.

    Raises:
        FingerprintError: naming the file and case when a case cannot be used.
    """
    path = Path(datalist)
    content = read_datalist(path)
    channels = _channels(content, path)
    keys = list(channels)
    entries = load_datalist(path, split, required_keys=(*keys, "label"))
    if not entries:
        raise FingerprintError(f"{path}: split {split!r} is empty")
    if max_cases is not None and len(entries) > max_cases:
        entries = [entries[i] for i in np.linspace(0, len(entries) - 1, max_cases).round().astype(int)]
    loader, rng = _loader(keys), np.random.default_rng(seed)
    records, samples = [], {k: [] for k in keys}
    logger.info("fingerprinting %d %s case(s) of %s ...", len(entries), split, path)
    started = last = time.monotonic()
    for index, entry in enumerate(entries, 1):
        if time.monotonic() - last >= PROGRESS_S:
            last = time.monotonic()
            logger.info("fingerprint: %d/%d cases (%.0f s)", index - 1, len(entries), last - started)
        record, sampled = _case(entry, keys, loader, samples_per_case, rng)
        records.append(record)
        for key in keys:
            samples[key].append(sampled[key])
    logger.info("fingerprint: %d cases in %.0f s", len(entries), time.monotonic() - started)
    spacings = np.array([r["spacing"] for r in records])
    shapes = np.array([r["shape"] for r in records])
    labels = _labels(content, {int(v) for r in records for v in r["class_voxels"]}, path)
    return {
        "datalist": str(path.resolve()),
        "split": split,
        "cases": len(records),
        "channels": channels,
        "labels": {str(v): n for v, n in labels.items()},
        "spacing": _axis_stats(spacings),
        "shape": _axis_stats(shapes),
        "intensity": {k: intensity_statistics(np.concatenate(samples[k])) for k in keys},
        "nonzero_fraction": {k: float(np.median([r["nonzero_fraction"][k] for r in records])) for k in keys},
        "background_fraction": {
            k: float(np.median([r["background_fraction"][k] for r in records])) for k in keys
        },
        "classes": _class_stats(records, labels),
        "channel_grids_differ": [r["case"] for r in records if r["channel_grids_differ"]],
        "per_case": records,
    }


def _axis_stats(values: np.ndarray) -> dict[str, list[float]]:
    return {
        "median": np.median(values, axis=0).tolist(),
        "p10": np.percentile(values, 10, axis=0).tolist(),
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
    }


def _class_stats(records: list[dict[str, Any]], labels: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for value, name in labels.items():
        voxels = [r["class_voxels"].get(str(value), 0) for r in records]
        present = [(n, r) for n, r in zip(voxels, records) if n]
        volume_share = [n / float(np.prod(r["shape"])) for n, r in present]
        out[str(value)] = {
            "name": name,
            "cases_present": len(present),
            "median_voxels": float(np.median([n for n, _ in present])) if present else 0.0,
            "median_volume_ml": float(np.median([n * r["voxel_ml"] for n, r in present])) if present else 0.0,
            "median_volume_share": float(np.median(volume_share)) if present else 0.0,
        }
    return out
