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
from collections.abc import Sequence

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
