"""The deterministic patient-level split of an imported dataset: test cases by a seeded hash, then k folds.

Rule: each case id gets the key ``sha256(f"{seed}:{case}")``; cases sorted by that key, the first
``round(test_fraction * n)`` are ``test``. The others are dealt into ``folds`` patient-disjoint folds by
:func:`pipeline.core.splits.split_folds` with the same seed; fold 0 is ``validation``, the rest ``training``.
With ``folds=1`` there is no validation split. So the imported datalist is its own fold-0 datalist (``clinseg train --fold 0 --folds k --fold-seed seed``),
a case never moves between test and the rest when cases are added or removed, and the same ids and seed
always give the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.splits import fold_of_entries
from pipeline.datasets.model import DatasetImportError


def _key(case: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{case}".encode()).hexdigest()


def split_cases(
    cases: Sequence[str], *, test_fraction: float = 0.2, folds: int = 5, seed: int = 0
) -> tuple[dict[str, str], dict[str, int]]:
    """Assign each case to ``training``, ``validation`` or ``test`` and each non-test case to a fold.

    Args:
        cases: unique case (patient) ids.
        test_fraction: share of cases held out as ``test``, in ``[0, 1)``.
        folds: number of cross-validation folds over the non-test cases; 1: no folds, no validation split
            (every non-test case trains; its fold is -1).
        seed: split seed.

    Returns:
        ``(split_of, fold_of)``: case -> split name, and non-test case -> fold index (fold 0 = validation).

    Raises:
        DatasetImportError: a bad fraction, duplicate ids, or fewer non-test cases than folds.
    """
    if not 0 <= test_fraction < 1:
        raise DatasetImportError(f"test fraction must be in [0, 1), got {test_fraction}")
    if len(set(cases)) != len(cases):
        raise DatasetImportError("case ids must be unique")
    ordered = sorted(cases, key=lambda c: _key(c, seed))
    n_test = round(test_fraction * len(ordered))
    rest = ordered[n_test:]
    if folds < 1 or (folds > 1 and len(rest) < folds):
        raise DatasetImportError(
            f"{folds} folds need at least {folds} non-test cases; {len(rest)} of {len(ordered)} cases are left "
            "after the test split (use fewer folds, a smaller test fraction, or 1 fold: no validation split)"
        )
    fold_of = (
        fold_of_entries([{"case": c} for c in rest], folds, seed) if folds > 1 else dict.fromkeys(rest, -1)
    )
    split_of = {c: "test" for c in ordered[:n_test]}
    split_of.update({c: "validation" if fold_of[c] == 0 else "training" for c in rest})
    return split_of, fold_of


def splits_from_nnunet(cases: Sequence[str], path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The split of nnU-Net's ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``, one per fold):
    each case's fold is the one whose ``val`` holds it; fold 0 is ``validation``, the rest ``training``, and
    there is no ``test`` split (nnU-Net's test cases are ``imagesTs``).

    Raises:
        DatasetImportError: the file is not such a list, a case is in several or no ``val`` lists, or the file
            names cases the import did not take.
    """
    try:
        folds = json.loads(path.read_text())
        val = [[str(c) for c in fold["val"]] for fold in folds]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DatasetImportError(f"{path}: not nnU-Net's splits (a list of {{'train', 'val'}} folds): {err}") from err
    fold_of: dict[str, int] = {}
    for k, names in enumerate(val):
        for case in names:
            if case in fold_of:
                raise DatasetImportError(f"{path}: case {case} is in the val lists of folds {fold_of[case]} and {k}")
            fold_of[case] = k
    unknown = sorted(set(fold_of) - set(cases))
    absent = sorted(set(cases) - set(fold_of))
    if unknown or absent:
        raise DatasetImportError(
            f"{path}: its folds do not match the imported cases"
            + (f"; not imported: {', '.join(unknown[:5])}" if unknown else "")
            + (f"; in no fold: {', '.join(absent[:5])}" if absent else "")
        )
    split_of = {c: "validation" if fold_of[c] == 0 else "training" for c in cases}
    return split_of, {c: fold_of[c] for c in cases}


def check_split(n_cases: int, *, test_fraction: float, folds: int, source: Path) -> None:
    """Refuse split parameters that ``n_cases`` cannot satisfy, before any case is read (a DICOM import
    rasterises every case first)."""
    if not 0 <= test_fraction < 1:
        raise DatasetImportError(f"test fraction must be in [0, 1), got {test_fraction}")
    rest = n_cases - round(test_fraction * n_cases)
    if folds < 1 or (folds > 1 and rest < folds):
        raise DatasetImportError(
            f"{source}: {folds} folds need at least {folds} non-test cases; the folder holds {n_cases} case(s), "
            f"{rest} after the test split (use fewer --folds, a smaller --test-fraction, or --folds 1)"
        )
