"""Region-based training on the real BRATS subjects: imported with named channels, planned with
``--regions whole_tumour=1,2,3,4;core=1,3,4;enhancing=4``, trained two iterations through
``python -m monai.bundle run`` (validation Dice per region in MLflow), evaluated per region and predicted back to
label values on each scan's own grid through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.datalist import load_datalist
from pipeline.planning.planner import plan_dataset
from tests.brats_data import import_brats
from tests.bundle_runs import monai_bundle_run

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

REGIONS = "whole_tumour=1,2,3,4;core=1,3,4;enhancing=4"
REGION_NAMES = ["whole_tumour", "core", "enhancing"]


@pytest.fixture(scope="module")
def brats(shared_data, tmp_path_factory) -> Path:
    """The 4 BRATS subjects: 2 training, 1 validation, 1 test."""
    return import_brats(shared_data, tmp_path_factory.mktemp("brats"))


def test_unknown_region_labels_are_refused_before_planning(brats, tmp_path):
    with pytest.raises(ValueError, match=r"region 'core' lists label value\(s\) \[7\]"):
        plan_dataset(brats, tmp_path / "bad", time_budget_s=60, device="cpu", regions="whole=1,2,3,4;core=7")


def test_brats_region_bundle_trains_evaluates_per_region_and_predicts_labels(brats, tmp_path):
    out = tmp_path / "bundle"
    plan = plan_dataset(brats, out, time_budget_s=600, device="cpu", threads=2, regions=REGIONS)
    assert plan["regions"]["names"] == REGION_NAMES and plan["regions"]["class_order"] == [2, 1, 4]
    assert plan["network"]["args"]["out_channels"] == 3 and plan["sampling"]["ratios"] == [1] * 5

    db = tmp_path / "mlflow.db"
    log = monai_bundle_run(
        out, ["train"], tmp_path,
        "--max_epochs", "1", "--steps_per_epoch", "1", "--val_interval", "1", "--samples_per_volume", "1", "--sw_overlap", "0",
        "--tracking_uri", f"sqlite:///{db}", "--log_run_artifacts", "False",  # fire reads False as a bool, "false" as a string
    )  # fmt: skip
    assert "Epoch[1] Complete" in log
    assert (out / "models" / "model.pt").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run = client.search_runs(client.get_experiment_by_name("clinseg").experiment_id)[0]
    assert {f"val_dice_{n}" for n in REGION_NAMES} <= set(run.data.metrics)

    code = main(["evaluate", str(out), "--split", "test", "--output", str(tmp_path / "eval"), "--overlap", "0",
                 "--no-tracking", "--quiet"])  # fmt: skip
    assert code == 0
    with open(tmp_path / "eval" / "summary.csv") as f:
        dice = {r["name"]: r for r in csv.DictReader(f) if r["metric"] == "dice"}
    assert list(dice) == REGION_NAMES
    assert dice["core"]["label"] == "1+3+4" and all(0.0 <= float(r["mean"]) <= 1.0 for r in dice.values())

    code = main(["predict", str(out), "--input", str(brats), "--output", str(tmp_path / "pred"), "--overlap", "0",
                 "--quiet"])  # fmt: skip
    assert code == 0
    entry = load_datalist(brats, "test", required_keys=("flair",))[0]
    seg = nib.load(tmp_path / "pred" / entry["case"] / "seg.nii.gz")
    image = nib.load(entry["flair"])
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3, 4}
    volumes = json.loads((tmp_path / "pred" / entry["case"] / "volumes.json").read_text())
    assert "necrosis" in json.dumps(volumes) and "whole_tumour" not in json.dumps(
        volumes
    )  # volumes per label
