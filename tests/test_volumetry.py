"""Volumes in mL from the affine determinant, intensity statistics, the CSV table, real organ volumes."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.outputs.volumetry import VOLUME_COLUMNS, structure_volumes, voxel_volume_ml, write_volumes_csv

SHAPE = (33, 34, 35)
LABELS = {1: "spleen", 2: "liver", 4: "absent"}


def _oblique_anisotropic() -> np.ndarray:
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.8, 1.2, 3.0])  # det = -2.88 mm^3
    aff[:3, 3] = [-50.0, 12.0, 7.5]
    return aff


def _mask_and_image():
    rng = np.random.default_rng(1)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:12, 3:20, 4:9] = 1
    mask[15:30, 5:25, 10:30] = 2
    image = rng.normal(40.0, 15.0, SHAPE).astype(np.float32) + 1000.0 * (mask == 1)
    return mask, image


@pytest.mark.parametrize("kind", ["numpy", "torch", "metatensor"])
def test_volume_is_count_times_det_on_oblique_grid(kind):
    mask, image = _mask_and_image()
    aff = _oblique_anisotropic()
    given, image_in, affine_in = mask, image, aff
    if kind == "torch":
        given, image_in = torch.as_tensor(mask), torch.as_tensor(image)
    elif kind == "metatensor":
        given = MetaTensor(torch.as_tensor(mask)[None], affine=torch.as_tensor(aff))
        image_in, affine_in = MetaTensor(torch.as_tensor(image)[None], affine=torch.as_tensor(aff)), None
    rows = structure_volumes(given, image_in, affine_in, LABELS)
    assert [r["label"] for r in rows] == [1, 2, 4]
    for row in rows[:2]:
        inside = mask == row["label"]
        assert row["voxels"] == int(inside.sum())
        assert row["volume_ml"] == pytest.approx(inside.sum() * 2.88 / 1000, rel=1e-9)
        assert row["mean_intensity"] == pytest.approx(
            float(image[inside].astype(np.float64).mean()), rel=1e-9
        )
        assert row["std_intensity"] == pytest.approx(float(image[inside].astype(np.float64).std()), rel=1e-7)
        assert (row["min_intensity"], row["max_intensity"]) == (float(image[inside].min()), float(image[inside].max()))
    assert rows[2] == {
        "label": 4,
        "name": "absent",
        "voxels": 0,
        "volume_ml": 0.0,
        "mean_intensity": None,
        "std_intensity": None,
        "min_intensity": None,
        "max_intensity": None,
    }


def test_no_image_and_spacing():
    mask, _ = _mask_and_image()
    rows = structure_volumes(mask, None, (0.5, 0.5, 2.0), {1: "spleen"})
    assert rows[0]["volume_ml"] == pytest.approx((mask == 1).sum() * 0.5 / 1000)
    assert all(rows[0][k] is None for k in ("mean_intensity", "std_intensity", "min_intensity", "max_intensity"))
    assert structure_volumes(mask.astype(np.float32), None, (0.5, 0.5, 2.0), {1: "spleen"}) == rows
    assert voxel_volume_ml(np.diag([2.0, 3.0, 4.0, 1.0])) == pytest.approx(0.024)


def test_undeclared_labels_are_logged_not_reported(caplog):
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[0, 0, 0] = 9
    rows = structure_volumes(mask, None, np.eye(4), {1: "a"})
    assert [r["voxels"] for r in rows] == [0]
    assert "[9]" in caplog.text


@pytest.mark.parametrize(
    "mask, image, aff, labels, match",
    [
        (np.full((4, 4, 4), 0.5, np.float32), None, np.eye(4), {1: "a"}, "integer labels"),
        (np.full((4, 4, 4), -1), None, np.eye(4), {1: "a"}, ">= 0"),
        (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5)), np.eye(4), {1: "a"}, "image shape"),
        (np.zeros((4, 4, 4), np.uint8), None, (1.0, -1.0, 1.0), {1: "a"}, "positive voxel sizes"),
        (np.zeros((4, 4, 4), np.uint8), None, None, {1: "a"}, "required unless"),
        (np.zeros((4, 4, 4), np.uint8), None, np.eye(4), {0: "bg"}, "positive integer ids"),
    ],
)
def test_input_errors(mask, image, aff, labels, match):
    with pytest.raises(ValueError, match=match):
        structure_volumes(mask, image, aff, labels)


def test_csv_header_rows_and_empty_cells(tmp_path):
    mask, image = _mask_and_image()
    rows = [dict(r, case="case_a") for r in structure_volumes(mask, image, np.eye(4), LABELS)]
    rows += [dict(r, case="case_b") for r in structure_volumes(mask, None, np.eye(4), {1: "spleen"})]
    out = write_volumes_csv(rows, tmp_path / "volumes.csv")
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == VOLUME_COLUMNS
    assert table[1][:5] == [
        "case_a",
        "1",
        "spleen",
        str((mask == 1).sum()),
        f"{(mask == 1).sum() / 1000:.4f}",
    ]
    assert table[3][3:] == ["0", "0.0000", "", "", "", ""]
    assert table[4][0] == "case_b" and table[4][5:] == ["", "", "", ""]
    old = {k: v for k, v in rows[0].items() if k not in ("min_intensity", "max_intensity")}  # volumes.json before min/max
    with open(write_volumes_csv([old], tmp_path / "old.csv"), newline="") as f:
        assert list(csv.reader(f))[1][5:] == [f"{old['mean_intensity']:.3f}", f"{old['std_intensity']:.3f}", "", ""]
    with pytest.raises(ValueError, match=r"lacks columns \['case'\]"):
        write_volumes_csv(structure_volumes(mask, None, np.eye(4), LABELS), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.realdata
def test_real_liver_and_spleen_volumes(shared_data):
    folder = shared_data / "totalseg"
    seg = nib.load(folder / "ct_sm_seg.nii.gz")
    ct = nib.load(folder / "ct_sm.nii.gz")
    names = {int(k): v for k, v in json.loads((folder / "labels_ct.json").read_text()).items()}
    rows = {
        r["name"]: r for r in structure_volumes(np.asarray(seg.dataobj), ct.get_fdata(), seg.affine, names)
    }
    assert len(rows) == len(names)
    liver, spleen = rows["liver"], rows["spleen"]
    assert liver["voxels"] == 38_634 and spleen["voxels"] == 9_452  # README: liver ~38.6k, spleen ~9.5k
    assert liver["volume_ml"] == pytest.approx(38_634 * 0.027)  # 3 mm isotropic: 27 uL per voxel (~1043 mL)
    assert spleen["volume_ml"] == pytest.approx(9_452 * 0.027)  # ~255 mL
    assert 0 < liver["mean_intensity"] < 150 and 0 < spleen["mean_intensity"] < 150  # soft tissue HU
