"""clinseg export: a training run as a self-contained model-zoo bundle that runs through ``clinseg predict`` (no
--checkpoint), ``python -m monai.bundle run`` from its folder, and carries the run's configs and metrics; for the
shipped bundles and a planned one; bad inputs fail with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.core.bundle import Bundle
from pipeline.core.checkpoint import CheckpointError, network_from_checkpoint
from pipeline.export.bundle import export_bundle
from pipeline.export.configs import MONAI_LABEL_POST
from pipeline.training.train import train_bundle
from tests.conftest import BUNDLES, REPO
from tests.export_fixtures import TINY_TRAINING, untrained_checkpoint

BUNDLE = BUNDLES / "ct_organ_resunet3d"
SHIPPED = sorted(p for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())
LAYOUT = [
    "LICENSE", "docs/README.md", "configs/metadata.json", "configs/train.yaml", "configs/inference.yaml",
    "configs/evaluate.yaml", "configs/logging.conf", "models/model.pt", "models/model.ts",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A 1-epoch run of ct_organ_resunet3d (SQLite store) and its export."""
    root = tmp_path_factory.mktemp("export_run")
    result = train_bundle(
        BUNDLE, dataset_dir=tiny_dataset.parent, ckpt_dir=root / "run", tracking_uri=f"sqlite:///{root}/mlflow.db",
        max_epochs=1, overrides=TINY_TRAINING,
    )  # fmt: skip
    return result, export_bundle(root / "run", root / "exported")


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.slow
def test_export_is_a_self_contained_bundle_of_the_run(trained):
    result, out = trained
    assert all((out / name).is_file() for name in LAYOUT)
    assert not (out / "configs" / "common.yaml").exists()  # merged into each config
    checkpoint = torch.load(out / "models" / "model.pt", weights_only=True)
    assert set(checkpoint) == {"model", "network"}
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"]["val_mean_dice"] == pytest.approx(result.best_metric, abs=1e-4)
    assert set(meta["eval_metrics"]) == {"val_mean_dice", "val_dice_organ", "val_dice_lesion"}
    assert meta["version"].startswith("0.1.2+") and meta["version"] in meta["changelog"]
    assert meta["required_packages_version"]["clinseg"]
    assert meta["training_run"]["mlflow_run_id"] == result.run_id
    inference = yaml.safe_load((out / "configs" / "inference.yaml").read_text())
    assert inference["roi_size"] == TINY_TRAINING["roi_size"]  # the run's override, not the shipped 64x64x32
    assert inference["bundle_root"] == "." and MONAI_LABEL_POST in inference
    for config in (out / "configs").glob("*.yaml"):
        assert str(result.ckpt_dir.parent) not in config.read_text(), f"{config.name} names a local folder"
    assert f"{result.best_metric:.4f}" in (out / "docs" / "README.md").read_text()
    scripted = torch.jit.load(str(out / "models" / "model.ts"))
    net = network_from_checkpoint(out / "models" / "model.pt")
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.slow
def test_exported_bundle_predicts_through_clinseg_and_monai_bundle_run(trained, tiny_dataset, tmp_path):
    _, out = trained
    assert main(["predict", str(out), "--input", str(tiny_dataset), "--output", str(tmp_path / "pred"),
                 "--no-preview", "--no-dicom-seg", "--no-amp", "--quiet"]) == 0  # fmt: skip
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
               "--dataset_dir", str(tiny_dataset.parent), "--output_dir", str(tmp_path / "runner")]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    cases = sorted(p.name for p in (tmp_path / "runner").iterdir())
    assert cases == [c["case"] for c in json.loads(tiny_dataset.read_text())["test"]]
    for case in cases:
        ours, runner = _labels(tmp_path / "pred" / case / "seg.nii.gz"), _labels(tmp_path / "runner" / case / "seg.nii.gz")
        assert ours.shape == runner.shape
        assert (ours == runner).mean() > 0.99  # same configs and weights; the Predictor skips uniform patches


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_bundle_exports(bundle, tmp_path):
    checkpoint = untrained_checkpoint(bundle, tmp_path / "run")
    out = export_bundle(checkpoint, tmp_path / "out", bundle=bundle)
    assert all((out / name).is_file() for name in LAYOUT)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {"val_mean_dice": 0.5} and meta["training_run"]["best_epoch"] == 3
    parser = Bundle.at(out).parser("inference")
    assert parser.get_parsed_content("network_def") is not None
    assert parser.get_parsed_content("preprocessing") is not None


def test_planned_bundle_exports_with_its_plan_and_a_license(tmp_path, monkeypatch):
    from pipeline.planning import plan as plan_module
    from pipeline.planning.bundle_writer import write_planned_bundle
    from pipeline.planning.compute import ComputeBudget
    from pipeline.planning.plan import make_plan
    from tests.planning_fixtures import fake_fingerprint, step_timing

    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    fingerprint = fake_fingerprint([0.8, 0.8, 2.5], [0.7, 0.7, 2.0], [256, 256, 60], {"ct": "CT"},
                                   nonzero=0.95, background=0.01, labels=("liver", "tumour"))  # fmt: skip
    plan = make_plan(fingerprint, ComputeBudget("cpu", 600.0), counts={"training": 8, "validation": 2}, dims="3d")
    datalist = tmp_path / "data" / "dataset.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"channels": {"ct": "CT"}, "training": [], "validation": [], "test": []}))
    planned = write_planned_bundle(tmp_path / "planned", plan, fingerprint, datalist)
    out = export_bundle(untrained_checkpoint(planned, tmp_path / "run"), tmp_path / "out", bundle=planned)
    assert all((out / name).is_file() for name in LAYOUT + ["configs/plan.json", "configs/fingerprint.json"])
    assert "see the training data's licence" in (out / "LICENSE").read_text()
    assert Bundle.at(out).parser("inference").get_parsed_content("network_def") is not None
    for config in (out / "configs").glob("*.yaml"):  # the planning machine's dataset folder stays behind
        assert str(tmp_path) not in config.read_text(), config.name
    assert Bundle.at(out).parser("inference")["dataset_dir"] == "data"
    card = (out / "docs" / "README.md").read_text()
    table = card[card.index("| setting | value |") : card.index("epochs trained")]
    assert "$" not in table and "@" not in table, table  # resolved: in_channels 1, amp False, ...
    assert "'in_channels': 1" in table


def _no_network(folder: Path) -> Path:
    path = untrained_checkpoint(BUNDLE, folder)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["network"]
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "make, bundle, error, match",
    [
        (lambda d: d, BUNDLE, FileNotFoundError, "has no best checkpoint model.pt"),
        (lambda d: untrained_checkpoint(BUNDLE, d), None, ValueError, "name it with --bundle"),
        (_no_network, BUNDLE, CheckpointError, "does not record its network"),
    ],
    ids=["empty-folder", "unknown-bundle", "no-network-spec"],
)
def test_bad_runs_fail_with_a_clear_message(tmp_path, make, bundle, error, match):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(error, match=match):
        export_bundle(make(folder), tmp_path / "out", bundle=bundle)


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    checkpoint = untrained_checkpoint(BUNDLE, tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        export_bundle(checkpoint, tmp_path / "out", bundle=BUNDLE)
    assert (tmp_path / "out" / "keep.txt").is_file()
    export_bundle(checkpoint, tmp_path / "out", bundle=BUNDLE, overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "models" / "model.ts").is_file()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--bundle", str(BUNDLE)]) == 2


@pytest.mark.slow
def test_qc_reference_is_written_when_training_ends_and_travels_with_the_export(trained):
    from pipeline.inference.predictor import Predictor
    from pipeline.inference.qc_reference_file import QC_REFERENCE_NAME

    result, out = trained
    written = json.loads((result.ckpt_dir / QC_REFERENCE_NAME).read_text())
    assert written["cases"] > 0 and written["temperature"] > 0
    assert {"ece_before", "ece_after"} <= set(written["calibration"])
    assert set(written["structures"]) == {"1", "2"}
    assert "datalist" not in json.dumps(written) and str(result.ckpt_dir) not in json.dumps(written)  # no paths
    assert json.loads((out / "models" / QC_REFERENCE_NAME).read_text()) == written
    predictor = Predictor.from_bundle(out)
    assert predictor.qc_reference == written and predictor.temperature == written["temperature"]
