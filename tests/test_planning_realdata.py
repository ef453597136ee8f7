"""``clinseg plan`` on real data: the MSD hippocampus set is imported, fingerprinted and planned, and the planned
bundle trains two iterations through ``python -m monai.bundle run``, then evaluates and predicts through the
CLI onto each scan's own grid; the multimodal BRATS subjects plan two z-scored MR channels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.datasets.importer import import_dataset
from pipeline.planning.fingerprint import dataset_fingerprint
from pipeline.planning.planner import plan_dataset
from tests.brats_data import import_brats
from tests.bundle_runs import monai_bundle_run

pytestmark = [pytest.mark.realdata]


@pytest.fixture(scope="module")
def hippocampus(shared_data, tmp_path_factory) -> Path:
    """The 200-case MSD hippocampus task imported as a clinseg datalist (128 / 32 / 40 split)."""
    dest = tmp_path_factory.mktemp("hippocampus")
    import_dataset(shared_data / "hippocampus", dest)
    return dest / "dataset.json"


@pytest.fixture(scope="module")
def planned(hippocampus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("planned") / "hippocampus_planned"
    plan = plan_dataset(hippocampus, out, time_budget_s=600, device="cpu", threads=2, max_cases=16)
    return out, plan


def _small_datalist(datalist: Path, dest: Path, sizes: dict[str, int]) -> Path:
    """The first cases of each split, as ``dest/dataset.json`` (a 2-iteration training run)."""
    content = json.loads(datalist.read_text())
    for split, n in sizes.items():
        content[split] = content[split][:n]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset.json").write_text(json.dumps(content))
    return dest / "dataset.json"


@pytest.mark.slow
def test_hippocampus_fingerprint_measures_the_training_split(hippocampus):
    fp = dataset_fingerprint(hippocampus, max_cases=12)
    assert fp["cases"] == 12 and fp["channels"] == {"mri": "MR"}
    assert fp["labels"] == {"1": "Anterior", "2": "Posterior"}
    assert fp["spacing"]["median"] == pytest.approx([1.0, 1.0, 1.0])
    assert all(25 <= n <= 60 for n in fp["shape"]["median"])  # about 35 x 50 x 35 voxels
    for value in ("1", "2"):  # each hippocampus part is a few millilitres
        assert fp["classes"][value]["cases_present"] == 12
        assert 0.5 < fp["classes"][value]["median_volume_ml"] < 5.0
    stats = fp["intensity"]["mri"]
    assert stats["p00_5"] <= stats["median"] <= stats["p99_5"]
    test_cases = {e["case"] for e in json.loads(hippocampus.read_text())["test"]}
    assert not test_cases & {r["case"] for r in fp["per_case"]}  # held-out cases are never measured


@pytest.mark.slow
def test_planned_hippocampus_bundle_is_a_sensible_mr_plan(planned):
    out, plan = planned
    assert plan["spatial_dims"] == 3 and plan["spacing"] == [1.0, 1.0, 1.0]
    assert plan["patch"] == [40, 56, 40]  # the median image, whole, as nnU-Net plans it
    assert plan["normalise"]["mri"]["_target_"] == "NormalizeIntensityd"
    assert plan["class_names"] == ["Anterior", "Posterior"]
    assert plan["training"]["max_epochs"] >= 1 and plan["training"]["time_budget_s"] == 600
    for name in (
        "common.yaml",
        "train.yaml",
        "inference.yaml",
        "evaluate.yaml",
        "metadata.json",
        "plan.json",
        "fingerprint.json",
        "logging.conf",
    ):
        assert (out / "configs" / name).is_file(), name
    assert json.loads((out / "configs" / "plan.json").read_text()) == plan


@pytest.mark.slow
def test_planned_bundle_trains_evaluates_and_predicts(planned, hippocampus, tmp_path):
    out, _ = planned
    small = _small_datalist(hippocampus, tmp_path / "small", {"training": 4, "validation": 1, "test": 2})
    log = monai_bundle_run(
        out, ["train"], tmp_path,
        "--dataset_dir", str(small.parent), "--max_epochs", "1", "--steps_per_epoch", "2", "--val_interval", "1",
        "--tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--log_run_artifacts", "False",
    )  # fmt: skip
    assert "Epoch[1] Complete" in log
    model = out / "models" / "model.pt"
    assert model.is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs(client.get_experiment_by_name("clinseg").experiment_id)[0]
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plan.json", "fingerprint.json", "common.yaml"} <= logged
    assert run.data.params["roi_size"] == "[40, 56, 40]"

    code = main(["evaluate", str(out), "--checkpoint", str(model), "--dataset-dir", str(small.parent),
                 "--split", "test", "--output", str(tmp_path / "eval"), "--no-tracking", "--quiet"])  # fmt: skip
    assert code == 0
    per_case = (tmp_path / "eval").rglob("*.csv")
    assert any("Anterior" in p.read_text() for p in per_case)

    code = main(["predict", str(out), "--input", str(small), "--output", str(tmp_path / "pred"), "--quiet"])
    assert code == 0
    for entry in json.loads(small.read_text())["test"]:
        seg = nib.load(tmp_path / "pred" / entry["case"] / "seg.nii.gz")
        image = nib.load(entry["mri"])
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


@pytest.mark.slow
def test_planned_2d_bundle_trains_on_slices_and_predicts_volumes(hippocampus, tmp_path):
    out = tmp_path / "planned2d"
    plan = plan_dataset(hippocampus, out, time_budget_s=300, device="cpu", dims="2d", threads=2, max_cases=8)
    assert plan["spatial_dims"] == 2 and len(plan["patch"]) == 2 and len(plan["spacing"]) == 2
    small = _small_datalist(hippocampus, tmp_path / "small", {"training": 2, "validation": 1, "test": 1})
    code = main(
        [
            "train",
            str(out),
            "--dataset-dir",
            str(small.parent),
            "--epochs",
            "1",
            "--set",
            "val_interval=1",
            "--set",
            "steps_per_epoch=2",  # a smoke run: the plan's epochs (at least 50 steps) are for real training
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--set",
            "log_run_artifacts=false",
        ]
    )
    assert code == 0
    code = main(["predict", str(out), "--input", str(small), "--output", str(tmp_path / "pred"), "--quiet"])
    assert code == 0
    entry = json.loads(small.read_text())["test"][0]
    seg, image = nib.load(tmp_path / "pred" / entry["case"] / "seg.nii.gz"), nib.load(entry["mri"])
    assert seg.shape == image.shape
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)


@pytest.mark.slow
def test_brats_plans_two_mr_channels_z_scored_inside_the_brain(shared_data, tmp_path):
    datalist = import_brats(shared_data, tmp_path / "brats")
    plan = plan_dataset(
        datalist, tmp_path / "bundle", time_budget_s=600, device="cpu", threads=2
    )
    assert list(plan["channels"]) == ["flair", "t1c"]
    for key in (
        "flair",
        "t1c",
    ):  # skull-stripped, background a constant -3.16 / -2.75: z-scored inside the brain
        assert plan["normalise"][key] == {
            "_target_": "transforms.intensity.foreground_zscore.ForegroundZScored",
            "keys": [key],
        }
    assert plan["spacing"] == [1.0, 1.0, 1.0] and plan["network"]["args"]["in_channels"] == 2
    common = (tmp_path / "bundle" / "configs" / "common.yaml").read_text()
    assert "ResampleToMatchd" in common  # the second channel onto the first's grid
