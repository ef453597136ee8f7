"""Patient-level folds: deterministic, disjoint, balanced; fold datalists load and keep the test split."""

from __future__ import annotations

import json

import pytest

from pipeline.core.splits import fold_datalist, fold_of_entries, split_folds
from pipeline.core.datalist import load_datalist


def _entries(n_patients: int, scans: int = 1) -> list[dict]:
    return [
        {"case": f"p{p:02d}_s{s}", "patient": f"p{p:02d}", "image": f"img/{p}_{s}.nii.gz"}
        for p in range(n_patients)
        for s in range(scans)
    ]


@pytest.mark.parametrize(("n", "folds"), [(10, 5), (7, 3), (5, 5), (23, 4)])
def test_folds_partition_entries_and_are_balanced(n, folds):
    parts = split_folds(_entries(n), folds, seed=1)
    assert len(parts) == folds
    cases = [e["case"] for part in parts for e in part]
    assert sorted(cases) == sorted(e["case"] for e in _entries(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_same_seed_same_folds_other_seed_other_folds():
    entries = _entries(20)
    first = [[e["case"] for e in p] for p in split_folds(entries, 5, seed=7)]
    assert first == [[e["case"] for e in p] for p in split_folds(entries, 5, seed=7)]
    assert first != [[e["case"] for e in p] for p in split_folds(entries, 5, seed=8)]
    assert fold_of_entries(entries, 5, 7) == fold_of_entries(
        entries[::-1], 5, 7
    )  # input order does not matter


def test_no_patient_in_two_folds():
    entries = _entries(9, scans=3)
    parts = split_folds(entries, 3, seed=0, patient_key="patient")
    owners = {}
    for k, part in enumerate(parts):
        for e in part:
            assert owners.setdefault(e["patient"], k) == k
    assert sorted(len(p) for p in parts) == [9, 9, 9]
    assert set(fold_of_entries(entries, 3, 0, patient_key="patient").values()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("folds", "key", "match"),
    [(1, "case", "folds must be an integer >= 2"), (11, "case", "needs at least 11 patients"),
     (2, "subject", "lacks the patient key 'subject'")],
)  # fmt: skip
def test_bad_arguments_are_refused(folds, key, match):
    with pytest.raises(ValueError, match=match):
        split_folds(_entries(10), folds, patient_key=key)


def test_fold_datalists_cover_pool_once_and_load(tiny_dataset, tmp_path):
    source = json.loads(tiny_dataset.read_text())
    pool = {e["case"] for s in ("training", "validation") for e in source[s]}
    held_out = []
    for k in range(2):
        out = fold_datalist(tiny_dataset, k, 2, seed=0, out_path=tmp_path / "cv" / f"fold{k}.json")
        content = json.loads(out.read_text())
        assert content["cross_validation"] == {"fold": k, "folds": 2, "seed": 0, "patient_key": "case"}
        train = {e["case"] for e in load_datalist(out, "training")}  # paths rebased onto the new folder
        val = {e["case"] for e in load_datalist(out, "validation")}
        assert train | val == pool and not train & val
        assert [e["case"] for e in load_datalist(out, "test")] == [e["case"] for e in source["test"]]
        held_out.extend(val)
    assert sorted(held_out) == sorted(pool)
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 2\)"):
        fold_datalist(tiny_dataset, 2, 2)
