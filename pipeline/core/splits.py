"""Deterministic, patient-level k-fold splits of a datalist (no patient in two folds), as nnU-Net users expect.

Entries are grouped by a patient key (default ``case``; use e.g. ``patient`` when a patient has several
scans), groups are ordered by key, shuffled with ``numpy.random.default_rng(seed)`` and dealt, largest first,
to the fold holding the fewest entries, so folds are balanced and a seed always gives the same split.
Entries that all carry an integer ``fold`` (imported from nnU-Net's ``splits_final.json``) keep those folds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_write_json
from pipeline.core.datalist import DatalistError, path_keys, read_datalist

POOLED_SPLITS = ("training", "validation")


def _check_folds(folds: int, n_groups: int) -> None:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if n_groups < folds:
        raise ValueError(f"folds={folds} needs at least {folds} patients, the datalist has {n_groups}")


def split_folds(
    entries: Sequence[Mapping[str, Any]], folds: int, seed: int = 0, *, patient_key: str = "case"
) -> list[list[dict[str, Any]]]:
    """Split datalist entries into ``folds`` patient-disjoint folds.

    Args:
        entries: datalist entries, each holding ``patient_key``.
        folds: number of folds, >= 2 and <= number of patients.
        seed: shuffling seed; the same entries and seed give the same folds.
        patient_key: entry field naming the patient; entries sharing it land in the same fold.

    Returns:
        ``folds`` lists of entries (copies), each in the input order.

    Raises:
        ValueError: bad ``folds``, or an entry lacks ``patient_key``.
    """
    recorded = _recorded_folds(entries, folds)
    if recorded is not None:
        return recorded
    groups: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        if patient_key not in entry:
            raise ValueError(f"datalist entry {index} lacks the patient key {patient_key!r}")
        groups.setdefault(str(entry[patient_key]), []).append(index)
    _check_folds(folds, len(groups))
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[i] for i in order]
    shuffled.sort(key=lambda k: -len(groups[k]))  # stable: equal sizes keep the shuffled order
    sizes = [0] * folds
    members: list[list[int]] = [[] for _ in range(folds)]
    for key in shuffled:
        target = min(range(folds), key=lambda f: (sizes[f], f))
        members[target].extend(groups[key])
        sizes[target] += len(groups[key])
    return [[dict(entries[i]) for i in sorted(fold)] for fold in members]


def _recorded_folds(entries: Sequence[Mapping[str, Any]], folds: int) -> list[list[dict[str, Any]]] | None:
    """The folds fixed by the entries' own ``fold`` fields (an import of nnU-Net's ``splits_final.json``), or
    ``None`` when the entries carry none."""
    if not entries or not all(isinstance(e.get("fold"), int) for e in entries):
        return None
    found = max(e["fold"] for e in entries) + 1
    if found != folds:
        raise ValueError(
            f"the datalist's entries fix {found} folds (their 'fold' field, from nnU-Net's splits_final.json); "
            f"folds={folds} contradicts it: use {found}"
        )
    return [[dict(e) for e in entries if e["fold"] == k] for k in range(folds)]


def fold_of_entries(
    entries: Sequence[Mapping[str, Any]], folds: int, seed: int = 0, *, patient_key: str = "case"
) -> dict[str, int]:
    """Patient key -> index of the fold that holds it out."""
    return {
        str(entry[patient_key]): k
        for k, fold in enumerate(split_folds(entries, folds, seed, patient_key=patient_key))
        for entry in fold
    }


def pooled_entries(datalist_path: str | Path, splits: Sequence[str] = POOLED_SPLITS) -> list[dict[str, Any]]:
    """The raw entries (paths as written) of the given splits of a datalist, concatenated; ``test`` stays out."""
    datalist_path = Path(datalist_path)
    content = read_datalist(datalist_path)
    pooled: list[dict[str, Any]] = []
    for split in splits:
        value = content.get(split, [])
        if not isinstance(value, list):
            raise DatalistError(f"datalist {datalist_path}: split {split!r} is not a list")
        pooled.extend({"image": e} if isinstance(e, str) else dict(e) for e in value)
    if not pooled:
        raise DatalistError(f"datalist {datalist_path} has no entries in {list(splits)}")
    return pooled


def _rebase(entry: dict[str, Any], src: Path, dst: Path, keys: Sequence[str]) -> dict[str, Any]:
    out = dict(entry)
    for key in keys:
        if isinstance(out.get(key), str) and not os.path.isabs(out[key]):
            out[key] = os.path.relpath((src / out[key]).resolve(), dst.resolve())
    return out


def fold_datalist(
    datalist_path: str | Path,
    fold: int,
    folds: int,
    seed: int = 0,
    out_path: str | Path | None = None,
    *,
    patient_key: str = "case",
) -> Path:
    """Write a datalist whose ``validation`` is fold ``fold`` and whose ``training`` is the other folds.

    The folds are drawn from the source's ``training`` and ``validation`` entries together; ``test`` and the
    other top-level fields are copied. Relative paths are rewritten relative to the new file's folder.

    Args:
        datalist_path: source ``dataset.json``.
        fold: the held-out fold, ``0 <= fold < folds``.
        folds: number of folds.
        seed: split seed (see :func:`split_folds`).
        out_path: where to write (default: ``<source folder>/dataset_fold{fold}of{folds}.json``).
        patient_key: entry field naming the patient.

    Returns:
        The written path (written atomically).
    """
    datalist_path = Path(datalist_path)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an integer in [0, {folds}), got {fold!r}")
    content = read_datalist(datalist_path)
    parts = split_folds(pooled_entries(datalist_path), folds, seed, patient_key=patient_key)
    out_path = Path(out_path) if out_path else datalist_path.parent / f"dataset_fold{fold}of{folds}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src, dst, keys = datalist_path.parent, out_path.parent, path_keys(content)
    result = {k: v for k, v in content.items() if k not in (*POOLED_SPLITS, "test")}
    result["training"] = [_rebase(e, src, dst, keys) for k, part in enumerate(parts) if k != fold for e in part]
    result["validation"] = [_rebase(e, src, dst, keys) for e in parts[fold]]
    raw_test = content.get("test", [])
    result["test"] = [_rebase({"image": e} if isinstance(e, str) else e, src, dst, keys) for e in raw_test]
    result.update(numTraining=len(result["training"]), numValidation=len(result["validation"]))
    result["numTest"] = len(result["test"])
    result["cross_validation"] = {"fold": fold, "folds": folds, "seed": seed, "patient_key": patient_key}
    atomic_write_json(out_path, result)
    return out_path
