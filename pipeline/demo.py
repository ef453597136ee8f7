"""The main job on embedded defaults: synthetic patients -> train the 3D bundle -> validate -> predict -> MLflow."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from pipeline.batch.runner import predict_folder
from pipeline.outputs.registry import SEG_NAME
from pipeline.core.bundle import Bundle
from pipeline.core.datalist import load_datalist
from pipeline.inference.predictor import Predictor
from pipeline.synthetic.phantoms import synthesize
from pipeline.core.tracking_uri import sqlite_uri
from pipeline.tracking.store import new_run_name
from pipeline.training.train import TrainResult, train_bundle

logger = logging.getLogger(__name__)

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ct_organ_resunet3d"
# Tuned so the whole demo finishes in under 10 minutes on a 2-core CPU (benchmarks/RESULTS.md).
DEMO_EPOCHS = 20
DEMO_OVERRIDES = {"val_interval": 4, "learning_rate": 0.005}


def _test_dice(datalist: Path, predictions: Path, labels: dict[int, str]) -> dict[str, float]:
    """Mean Dice per structure of the predicted test cases against their reference labels (input grid)."""
    scores = []
    classes = max(labels) + 1
    for entry in load_datalist(datalist, "test", required_keys=("image", "label")):
        seg_path = predictions / entry["case"] / SEG_NAME
        if seg_path.is_file():
            pred = one_hot(torch.as_tensor(np.asanyarray(nib.load(seg_path).dataobj)).long()[None, None], classes)
            ref = one_hot(torch.as_tensor(np.asanyarray(nib.load(entry["label"]).dataobj)).long()[None, None], classes)
            scores.append(compute_dice(pred, ref, include_background=False, ignore_empty=False)[0])
    if not scores:
        return {}
    mean = torch.stack(scores).mean(dim=0)
    return {labels[value]: float(mean[value - 1]) for value in sorted(labels)}


def venv_command(name: str, module: str | None = None) -> str:
    """The full path of console script ``name`` installed beside this interpreter (``.venv/bin/mlflow``), so a
    printed command runs without activating the environment; ``<python> -m <module>`` when it is not there."""
    script = Path(sys.executable).parent / name  # not resolved: a venv's python is a link to the base one
    if script.is_file():
        return str(script)
    return f"{sys.executable} -m {module or name}"


def run_demo(
    workdir: Path,
    *,
    cases: int = 20,
    max_epochs: int | None = None,
    seed: int = 0,
    bundle: Path = DEMO_BUNDLE,
    shape: tuple[int, ...] | None = None,
    overrides: dict | None = None,
) -> TrainResult:
    """Run the whole job in ``workdir``: ``data/``, ``runs/<run>/``, ``mlflow.db``, ``predictions/<case>/``.

    ``shape`` (phantom grid) and ``overrides`` (bundle knobs for training and prediction) exist for quick runs.
    """
    start = time.perf_counter()
    workdir = workdir.resolve()
    bundle_obj = Bundle.at(bundle)
    data_dir = workdir / "data"
    if not (data_dir / "dataset.json").is_file():
        logger.info("synthesizing %d CT phantoms into %s", cases, data_dir)
        synthesize(data_dir, cases=cases, seed=seed, shape=shape)
    run_name = new_run_name(bundle_obj.name)
    tracking_uri = sqlite_uri(workdir / "mlflow.db")
    result = train_bundle(
        bundle_obj,
        dataset_dir=data_dir,
        ckpt_dir=workdir / "runs" / run_name,
        tracking_uri=tracking_uri,
        max_epochs=max_epochs or DEMO_EPOCHS,
        overrides={**DEMO_OVERRIDES, **(overrides or {}), "run_name": run_name, "seed": seed},
    )
    predictor = Predictor.from_bundle(bundle_obj, result.best_checkpoint, **(overrides or {}))
    predictions = workdir / "predictions"
    report = predict_folder(predictor, data_dir / "dataset.json", predictions, split="test", overwrite=True)
    test_dice = _test_dice(data_dir / "dataset.json", predictions, predictor.label_names)
    minutes = (time.perf_counter() - start) / 60
    evaluate = (
        f"{venv_command('clinseg', 'pipeline.cli')} evaluate {bundle_obj.root} --checkpoint {result.best_checkpoint} "
        f"--dataset-dir {data_dir} --split test --output {workdir / 'evaluation'}"
    )
    lines = [
        "",
        f"clinseg demo finished in {minutes:.1f} min",
        f"  validation Dice (best epoch {result.best_epoch}): mean {result.best_metric:.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.best_per_class.items()),
        "  test-case Dice on the input grid: " + ", ".join(f"{k} {v:.4f}" for k, v in test_dice.items()),
        f"  data:        {data_dir}",
        f"  checkpoints: {result.ckpt_dir}",
        f"  predictions: {predictions} ({report.summary_line()})",
        f"  MLflow run:  {result.run_name} ({result.run_id})",
        f"  open the MLflow UI: {venv_command('mlflow')} ui --backend-store-uri {tracking_uri}",
        f"  evaluate the test cases: {evaluate}",
    ]
    print("\n".join(lines))
    return result
