"""``benchmarks.hippocampus_nnunet``: the Dice both benchmark sides are scored with, and nnU-Net's raw dataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from benchmarks.hippocampus_nnunet import dice_per_label, prepare_raw_dataset

SHAPE = (7, 6, 5)


def _label_map(*boxes: tuple[int, slice]) -> np.ndarray:
    arr = np.zeros(SHAPE, np.uint8)
    for value, sl in boxes:
        arr[sl] = value
    return arr


def _save(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


FRONT = (1, np.s_[:3, :3])  # 3*3*5 = 45 voxels
BACK = (2, np.s_[4:, 3:])  # 3*3*5 = 45 voxels
HALF_FRONT = (1, np.s_[:3, :3, :2])  # 18 voxels inside FRONT


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        (_label_map(FRONT, BACK), _label_map(FRONT, BACK), {1: 1.0, 2: 1.0}),  # perfect
        (
            _label_map((1, BACK[1]), (2, FRONT[1])),
            _label_map(FRONT, BACK),
            {1: 0.0, 2: 0.0},
        ),  # swapped: disjoint
        (_label_map(), _label_map(), {1: 1.0, 2: 1.0}),  # both empty
        (_label_map(FRONT), _label_map(FRONT, BACK), {1: 1.0, 2: 0.0}),  # label 2 missed
        (_label_map(HALF_FRONT), _label_map(FRONT), {1: 2 * 18 / (18 + 45), 2: 1.0}),  # partial overlap
    ],
    ids=["perfect", "disjoint", "both-empty", "missed-label", "partial"],
)
def test_dice_per_label_values(tmp_path, pred, ref, expected):
    entries = [{"case": "c1", "label": str(_save(tmp_path / "ref.nii.gz", ref))}]
    result = dice_per_label({"c1": _save(tmp_path / "pred.nii.gz", pred)}, entries)
    assert result["cases"]["c1"] == pytest.approx(expected)
    assert result["mean"] == pytest.approx(expected)
    assert result["mean_all"] == pytest.approx(np.mean(list(expected.values())))


def test_dice_per_label_folder_and_mean_over_cases(tmp_path):
    (tmp_path / "pred").mkdir()
    entries = []
    for case, pred in (("a", _label_map(FRONT, BACK)), ("b", _label_map(FRONT))):
        entries.append(
            {"case": case, "label": str(_save(tmp_path / f"{case}_ref.nii.gz", _label_map(FRONT, BACK)))}
        )
        _save(tmp_path / "pred" / f"{case}.nii.gz", pred)
    result = dice_per_label(tmp_path / "pred", entries)
    assert result["mean"] == pytest.approx({1: 1.0, 2: 0.5})
    assert result["mean_all"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "pred_shape, pred_affine, match",
    [
        ((7, 6, 4), np.eye(4), "shape"),
        (SHAPE, np.diag([2.0, 1.0, 1.0, 1.0]), "affine"),
    ],
    ids=["shape", "affine"],
)
def test_dice_per_label_grid_mismatch_names_file(tmp_path, pred_shape, pred_affine, match):
    entries = [{"case": "c1", "label": str(_save(tmp_path / "ref.nii.gz", _label_map(FRONT)))}]
    pred = _save(tmp_path / "pred.nii.gz", np.zeros(pred_shape, np.uint8), pred_affine)
    with pytest.raises(ValueError, match=rf"pred\.nii\.gz.*{match}"):
        dice_per_label({"c1": pred}, entries)


def test_dice_per_label_missing_prediction_raises(tmp_path):
    entries = [{"case": "c1", "label": str(_save(tmp_path / "ref.nii.gz", _label_map(FRONT)))}]
    with pytest.raises(FileNotFoundError, match="c1"):
        dice_per_label({}, entries)


def test_prepare_raw_dataset_keeps_test_cases_out_of_training(tmp_path):

    def entry(case):
        return {
            "case": case,
            "image": str(_save(tmp_path / f"{case}_img.nii.gz", _label_map(FRONT))),
            "label": str(_save(tmp_path / f"{case}_lbl.nii.gz", _label_map(FRONT))),
        }

    datalist = {
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [entry("a"), entry("b")],
        "validation": [entry("c")],
        "test": [entry("d")],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    data = prepare_raw_dataset(tmp_path / "dataset.json", tmp_path / "nnunet")
    names = {
        sub: sorted(p.name for p in (data.raw / sub).iterdir())
        for sub in ("imagesTr", "labelsTr", "imagesTs")
    }
    assert names == {
        "imagesTr": ["a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz"],
        "labelsTr": ["a.nii.gz", "b.nii.gz", "c.nii.gz"],
        "imagesTs": ["d_0000.nii.gz"],
    }
    raw_json = json.loads((data.raw / "dataset.json").read_text())
    assert raw_json["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert raw_json["numTraining"] == 3
    assert (data.train_cases, data.val_cases) == (["a", "b"], ["c"])
    assert data.env["nnUNet_raw"] == str(tmp_path.resolve() / "nnunet" / "nnUNet_raw")


def test_prepare_raw_dataset_names_missing_file(tmp_path):

    missing = {"case": "a", "image": str(tmp_path / "nope.nii.gz"), "label": str(tmp_path / "nope.nii.gz")}
    datalist = {"labels": {"0": "background"}, "training": [missing], "validation": [], "test": []}
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        prepare_raw_dataset(tmp_path / "dataset.json", tmp_path / "nnunet")


def test_dice_per_region_scores_the_union_of_its_labels(tmp_path):
    ref = _label_map(FRONT, BACK)
    pred = _label_map((2, FRONT[1]), (1, BACK[1]))  # labels swapped: each label wrong, their union right
    entries = [{"case": "c1", "label": str(_save(tmp_path / "ref.nii.gz", ref))}]
    result = dice_per_label(
        {"c1": _save(tmp_path / "pred.nii.gz", pred)}, entries, {"both": [1, 2], "front": [1]}
    )
    assert result["cases"]["c1"] == pytest.approx({"both": 1.0, "front": 0.0})
