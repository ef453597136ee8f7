"""Evaluation: per-label metrics in mm on known shapes, empty-structure rules, tables and the MLflow run."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipeline.core.checkpoint import NetworkSpec
from pipeline.core.datalist import load_datalist
from pipeline.evaluation import evaluate as evaluate_module
from pipeline.evaluation.evaluate import (
    EvaluationOptions,
    case_metrics,
    evaluate_checkpoint,
    evaluate_entries,
    summarize,
    voxel_spacing,
)
from pipeline.inference.case import Segmentation
from pipeline.inference.predictor import InferenceOptions, Predictor
from pipeline.tracking.run_tags import RUN_TYPE_TAG
from tests.conftest import BUNDLES
from transforms.io.scan import load_scan

BUNDLE = BUNDLES / "ct_organ_resunet3d"
NAMES = {1: "organ", 2: "lesion"}
SHAPE = (1, 13, 14, 15)
INFERENCE = InferenceOptions(roi_size=(32, 32, 16), device="cpu")


def _cube(
    value: int, start: tuple[int, int, int], size: int = 4, base: torch.Tensor | None = None
) -> torch.Tensor:
    out = torch.zeros(SHAPE, dtype=torch.uint8) if base is None else base.clone()
    x, y, z = start
    out[0, x : x + size, y : y + size, z : z + size] = value
    return out


def test_identical_maps_score_perfectly():
    label = _cube(2, (6, 6, 6), 2, _cube(1, (2, 2, 2), 8))
    rows = case_metrics(label, label, [0.8, 0.8, 2.5], NAMES)
    for row in rows:
        assert (row["dice"], row["iou"], row["hd95_mm"], row["msd_mm"], row["surface_dice"]) == (
            1,
            1,
            0,
            0,
            1,
        )
    assert [r["label_voxels"] for r in rows] == [8**3 - 8, 8]


@pytest.mark.parametrize("spacing_x", [1.0, 2.0, 3.5])
def test_one_voxel_shift_gives_known_overlap_and_distance_in_mm(spacing_x):
    label, pred = _cube(1, (3, 3, 3)), _cube(1, (4, 3, 3))  # 4^3 cubes shifted by one voxel along X
    (row,) = case_metrics(pred, label, [spacing_x, 1.0, 1.0], {1: "organ"}, surface_tolerance_mm=0.5)
    assert row["dice"] == pytest.approx(2 * 48 / 128)
    assert row["iou"] == pytest.approx(48 / 80)
    assert row["hd95_mm"] == pytest.approx(spacing_x)
    assert 0 < row["msd_mm"] <= spacing_x
    assert 0 < row["surface_dice"] < 1


@pytest.mark.parametrize(
    "shape, spacing, seed",
    [((24, 20, 12), [0.8, 0.8, 2.5], 0), ((24, 20, 12), [1.0, 1.0, 1.0], 1), ((32, 28), [0.5, 1.5], 2)],
)
def test_surface_scores_equal_monais_three_metrics(shape, spacing, seed):
    """One surface-distance pass gives MONAI's HD95, symmetric MSD and surface Dice (noisy blobs)."""
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    from pipeline.evaluation.surface import surface_scores

    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float) for n in shape], indexing="ij"))
    centre = torch.tensor([n / 2 for n in shape]).view(-1, *[1] * len(shape))
    radius = ((grid - centre) ** 2).sum(0).sqrt()
    label = (radius < min(shape) / 3).float()
    pred = ((radius + 2 * torch.rand(shape, generator=gen)) < min(shape) / 3).float()  # ragged surface
    pred[(0,) * len(shape)] = 1  # and a stray voxel far away
    pv, yv = pred[None, None], label[None, None]
    common = {"include_background": True, "reduction": "none"}
    expected = {
        "hd95_mm": float(HausdorffDistanceMetric(percentile=95, **common)(pv, yv, spacing=spacing)),
        "msd_mm": float(SurfaceDistanceMetric(symmetric=True, **common)(pv, yv, spacing=spacing)),
        "surface_dice": float(SurfaceDiceMetric([1.0], **common)(pv, yv, spacing=spacing)),
    }
    assert surface_scores(pred, label, spacing, 1.0) == pytest.approx(expected, rel=1e-6)


def test_empty_structures_follow_documented_rules():
    organ = _cube(1, (2, 2, 2))
    rows = {r["name"]: r for r in case_metrics(organ, organ, [1, 1, 1], NAMES)}
    assert (
        rows["lesion"]["dice"] == rows["lesion"]["iou"] == rows["lesion"]["surface_dice"] == 1.0
    )  # both empty
    assert math.isnan(rows["lesion"]["hd95_mm"]) and math.isnan(rows["lesion"]["msd_mm"])
    missed = {r["name"]: r for r in case_metrics(organ, _cube(2, (8, 8, 8), 2, organ), [1, 1, 1], NAMES)}
    assert missed["lesion"]["dice"] == missed["lesion"]["surface_dice"] == 0.0  # reference only
    assert math.isnan(missed["lesion"]["hd95_mm"]) and missed["lesion"]["label_voxels"] == 8


@pytest.mark.parametrize(
    ("pred", "spacing", "match"),
    [
        (torch.zeros(1, 5, 5, 6, dtype=torch.uint8), [1, 1, 1], "one shape"),
        (torch.zeros(SHAPE, dtype=torch.uint8), [1, 1], "one value per spatial axis"),
        (torch.zeros(SHAPE, dtype=torch.uint8), [1, 0, 1], "positive finite"),
        (torch.full(SHAPE, 3, dtype=torch.uint8), [1, 1, 1], r"label values \[3\]"),
    ],
)
def test_bad_inputs_are_refused(pred, spacing, match):
    with pytest.raises(ValueError, match=match):
        case_metrics(pred, torch.zeros(SHAPE, dtype=torch.uint8), spacing, NAMES)


def test_voxel_spacing_of_an_oblique_affine():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    assert voxel_spacing(affine, 3) == pytest.approx([0.7, 0.9, 2.5])


def test_summary_skips_nan_and_counts_values():
    rows = [
        {"case": "a", "label": 1, "name": "organ", "dice": 0.8, "iou": 0.6, "hd95_mm": 2.0, "msd_mm": 1.0,
         "surface_dice": 0.9},
        {"case": "b", "label": 1, "name": "organ", "dice": 0.6, "iou": 0.4, "hd95_mm": math.nan,
         "msd_mm": math.nan, "surface_dice": 0.0},
    ]  # fmt: skip
    summary = {s["metric"]: s for s in summarize(rows)}
    assert summary["dice"]["mean"] == pytest.approx(0.7) and summary["dice"]["n"] == 2
    assert summary["dice"]["std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert (
        summary["hd95_mm"]["n"] == 1
        and summary["hd95_mm"]["mean"] == 2.0
        and math.isnan(summary["hd95_mm"]["std"])
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = NetworkSpec(
        "res_unet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16, 32]}
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": spec.build().state_dict(), "network": spec.state_dict()}, path)
    return path


def test_reference_as_prediction_scores_one_on_the_dicom_input_grid(tiny_dataset, checkpoint, monkeypatch):
    predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=INFERENCE)
    entries = [
        dict(e, image=e["ct_dicom"]) for e in load_datalist(tiny_dataset, "test")
    ]  # DICOM image, NIfTI label
    by_image = {e["image"]: e["label"] for e in entries}
    monkeypatch.setattr(
        predictor, "predict", lambda inputs: Segmentation(load_scan(by_image[inputs["image"]], label=True))
    )
    rows = evaluate_entries(predictor, entries, options=EvaluationOptions())
    assert len(rows) == 2 * len(entries)
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["surface_dice"] == 1.0 for r in rows)


def test_evaluate_checkpoint_writes_tables_and_logs_a_linked_mlflow_run(
    tiny_dataset, checkpoint, tmp_path, monkeypatch
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = EvaluationOptions(inference=INFERENCE, train_run_id="0123abcd")
    scored_ms = []
    real = evaluate_module.evaluate_entries
    monkeypatch.setattr(
        evaluate_module, "evaluate_entries",
        lambda *a, **kw: (real(*a, **kw), scored_ms.append(time.time() * 1000))[0],
    )  # fmt: skip
    called_ms = time.time() * 1000
    result = evaluate_checkpoint(
        BUNDLE, checkpoint, tiny_dataset, "test", tmp_path / "eval", uri, options=options
    )

    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(result.rows) == 4  # 2 test cases x 2 labels
    assert {"case", "label", "name", "dice", "iou", "hd95_mm", "msd_mm", "surface_dice"} <= set(table[0])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["summary"]
    assert {(s["name"], s["metric"]) for s in summary} >= {("organ", "dice"), ("lesion", "hd95_mm")}
    assert not list((tmp_path / "eval").glob(".tmp-*"))

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # the run spans the evaluation (prediction and scoring included), not just its logging
    assert called_ms - 1 <= run.info.start_time <= scored_ms[0] <= run.info.end_time
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags[RUN_TYPE_TAG] == "evaluation"
    assert run.data.tags["clinseg.train_run_id"] == "0123abcd"
    assert run.data.tags["dataset.fingerprint"].startswith("sha256:")
    assert run.data.metrics["eval_mean_dice"] == pytest.approx(result.mean("dice"))
    assert run.data.params["split"] == "test"
    local = client.download_artifacts(result.run_id, "evaluation/per_case.json", str(tmp_path))
    logged = json.loads(Path(local).read_text())
    assert {"case", "name", "dice", "hd95_mm"} <= set(logged["columns"]) and len(logged["data"]) == 4


@pytest.mark.parametrize(("progress", "terminal"), [(True, True), (True, False), (False, True)])
def test_progress_bar_counts_cases_on_a_terminal_unless_quiet(
    tiny_dataset, checkpoint, monkeypatch, capsys, progress, terminal
):
    predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=INFERENCE)
    entries = load_datalist(tiny_dataset, "test")
    by_image = {e["image"]: e["label"] for e in entries}
    monkeypatch.setattr(
        predictor, "predict", lambda inputs: Segmentation(load_scan(by_image[inputs["image"]], label=True))
    )
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    evaluate_entries(predictor, entries, options=EvaluationOptions(progress=progress))
    err = capsys.readouterr().err
    assert (f"{len(entries)}/{len(entries)}" in err and "dice=1.000" in err) == (progress and terminal)
    assert ("\r" in err) == (progress and terminal)  # no redraws in a log file


def _trained_checkpoint(folder: Path, checkpoint: Path, tracking_uri: str) -> Path:
    """A checkpoint folder as ``clinseg train`` leaves it: weights and the config as run naming its store."""
    from pipeline.tracking.store import CONFIG_AS_RUN

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_AS_RUN).write_text(json.dumps({"tracking_uri": tracking_uri, "max_epochs": 1}))
    (folder / "model.pt").write_bytes(checkpoint.read_bytes())
    return folder / "model.pt"


@pytest.mark.parametrize(
    ("explicit", "env", "recorded", "expected", "reason"),
    [
        ("sqlite:///x.db", "sqlite:///env.db", "sqlite:///train.db", "sqlite:///x.db", "--tracking-uri"),
        (None, "sqlite:///env.db", "sqlite:///train.db", "sqlite:///env.db", "MLFLOW_TRACKING_URI"),
        (None, None, "sqlite:///train.db", "sqlite:///train.db", "training run's store"),
        (None, None, "$pipeline.tracking.store.default_tracking_uri()", "cwd", "default store"),
        (None, None, None, "cwd", "default store"),
    ],
)  # fmt: skip
def test_evaluation_store_prefers_flag_env_then_the_training_store(
    tmp_path, checkpoint, monkeypatch, explicit, env, recorded, expected, reason
):
    from pipeline.evaluation.tables import evaluation_store

    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = _trained_checkpoint(tmp_path / "run", checkpoint, recorded) if recorded else checkpoint
    uri, why = evaluation_store(ckpt, explicit)
    assert uri == (f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}" if expected == "cwd" else expected)
    assert reason in why


def test_cli_evaluate_logs_into_the_training_runs_store_and_says_so(
    tiny_dataset, checkpoint, tmp_path, monkeypatch, capsys
):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}"
    ckpt = _trained_checkpoint(tmp_path / "demo" / "runs" / "r1", checkpoint, store)
    code = main(["evaluate", str(BUNDLE), "--checkpoint", str(ckpt), "--dataset-dir", str(tiny_dataset.parent),
                 "--split", "test", "--roi-size", "32", "32", "16", "--device", "cpu", "--quiet",
                 "--output", str(tmp_path / "eval")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and f"MLflow store: {store} (the training run's store" in out and f"in {store}" in out
    assert not (tmp_path / "mlflow.db").exists()
    runs = mlflow.MlflowClient(tracking_uri=store).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking_uri=store).search_experiments()]
    )
    assert [r.data.tags[RUN_TYPE_TAG] for r in runs] == ["evaluation"]
