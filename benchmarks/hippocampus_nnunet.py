"""nnU-Net v2 side of the hippocampus benchmark, and the Dice both sides are scored with.

    python benchmarks/hippocampus_nnunet.py --datalist DEST/dataset.json --work /tmp/nnunet-bench --budget 1800

``DEST/dataset.json`` is what ``clinseg import ../shared/data/hippocampus DEST`` writes (``training``,
``validation``, ``test`` lists of ``{case, image, label}``). nnU-Net sees the 160 development cases only, with
one fold in ``splits_final.json``: train = our ``training`` cases, val = our ``validation`` cases. The 40
``test`` cases go to ``imagesTs`` for prediction only, and are scored by :func:`dice_per_label` on their own grid.

nnU-Net v2 (PyPI ``nnunetv2``) lives in its own venv (:func:`ensure_nnunet_venv`): ``torch==2.13.0`` first (the
local CPU wheel), then ``nnunetv2`` with torch held at 2.13.0 by a constraint file, so pip pulls no CUDA wheel.
nnU-Net runs as its own console scripts in subprocesses; this process uses only stdlib, numpy and nibabel.
The torchvision wheel pip pairs with torch 2.13 is a CUDA build that fails to import against the CPU torch; nnU-Net's
default U-Net never imports it, but its trainer lookup crawls the Primus trainers (timm -> torchvision), which is
why the budget trainer is installed as a top-level module that the lookup finds first.

Time budget: nnU-Net stops by epoch count only (1000 epochs of 250 iterations by default). On this 2-core CPU
one 250-iteration epoch takes about 15 minutes on a quiet machine (3.3-3.5 s per training iteration, about 1 s per
validation iteration; up to 6.3 s per iteration while sharing the CPU), so 30 minutes is about two epochs, and
neither the default nor the fixed-length variants (``nnUNetTrainer_1epoch``/``_5epochs``/...) fit a wall-clock
budget. Training uses ``nnUNetTrainer_TimeBudget`` (``nnunet_trainer_time_budget.py`` beside this file, copied
into the venv): nnU-Net's default trainer whose poly LR schedule runs per iteration over the iterations that fit
before the deadline (re-estimated after every iteration from the measured cost), ending the epoch in progress
there, and which skips nnU-Net's final fold validation. The budget clock starts when ``nnUNetv2_train`` is
launched, so process start, data unpacking and the final checkpoint count; planning/preprocessing and prediction
are timed apart.

Threads on the 2-core machine: nnU-Net sets torch to ``cpu_count()`` threads on CPU (2 here). Data augmentation
runs in ``nnUNet_n_proc_DA`` background workers (nnU-Net's default 12, capped at cpu_count); we set ``da_workers``,
default 0 (augmentation in the training process): on the quiet machine 0 and 1 worker measured 3.34 and 3.49 s per
iteration (one run each), the worker only competing with torch's two threads. Preprocessing uses ``threads``
processes, prediction one preprocessing and one export worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
TRAINER = "nnUNetTrainer_TimeBudget"
CONFIGURATION = "3d_fullres"
TORCH_PIN = "torch==2.13.0"
_TRAINER_SOURCE = Path(__file__).with_name("nnunet_trainer_time_budget.py")
DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".bench" / "nnunet-venv"


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _nnunet_version(python: Path) -> str | None:
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, nnunetv2; print(m.version('nnunetv2'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_nnunet_venv(path: Path = DEFAULT_VENV) -> Path:
    """Create (or reuse, when it already imports nnunetv2) a venv with CPU torch 2.13.0 and nnunetv2.

    Returns the venv folder; the installed versions are written to ``path/versions.json``.
    """
    path = Path(path).resolve()
    python = _venv_python(path)
    if not (python.exists() and _nnunet_version(python)):
        logger.info("creating nnU-Net venv in %s", path)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        constraint = path / "torch-constraint.txt"
        constraint.write_text(TORCH_PIN + "\n")
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_PIN], check=True)
        subprocess.run([*pip, "-c", str(constraint), "nnunetv2"], check=True)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            (
                "import importlib.metadata as m, json; print(json.dumps("
                "{d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = json.loads(probe.stdout)
    if not installed.get("torch", "").startswith("2.13.0"):
        raise RuntimeError(f"nnU-Net venv {path}: torch {installed.get('torch')}, expected {TORCH_PIN}")
    cuda = sorted(name for name in installed if name.startswith(("nvidia-", "cuda-", "triton")))
    if cuda:
        raise RuntimeError(f"nnU-Net venv {path} holds CUDA packages {cuda}; delete it and rerun")
    versions = {
        k: installed[k] for k in ("nnunetv2", "torch", "dynamic_network_architectures") if k in installed
    }
    (path / "versions.json").write_text(json.dumps(versions, indent=1))
    _install_trainer(python)
    return path


def _install_trainer(python: Path) -> None:
    """Copy the time-budget trainer next to nnU-Net's own trainer module (overwrites: the repo copy wins)."""
    where = subprocess.run(
        [str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copyfile(_TRAINER_SOURCE, Path(where) / "training" / "nnUNetTrainer" / f"{TRAINER}.py")


@dataclass(frozen=True)
class RawDataset:
    """nnU-Net folders of one benchmark run; ``env`` holds nnUNet_raw/_preprocessed/_results for subprocesses."""

    root: Path
    raw: Path
    images_ts: Path
    train_cases: list[str]
    val_cases: list[str]
    test_entries: list[dict]
    env: dict[str, str] = field(repr=False)


def _link(src: str | Path, dst: Path) -> None:
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"datalist entry points to a missing file: {src}")
    dst.unlink(missing_ok=True)
    dst.symlink_to(src.resolve())


def prepare_raw_dataset(datalist_json: Path, nnunet_root: Path) -> RawDataset:
    """Write ``nnUNet_raw/Dataset004_Hippocampus`` from a clinseg datalist (symlinks to the original files).

    imagesTr/labelsTr hold the ``training`` + ``validation`` cases, imagesTs the ``test`` cases (images only).
    """
    datalist = json.loads(Path(datalist_json).read_text())
    for key in ("training", "validation", "test", "labels"):
        if key not in datalist:
            raise ValueError(f"{datalist_json}: no {key!r} key (expected clinseg import's dataset.json)")
    root = Path(nnunet_root).resolve()
    raw = root / "nnUNet_raw" / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        shutil.rmtree(raw / sub, ignore_errors=True)
        (raw / sub).mkdir(parents=True)
    dev = datalist["training"] + datalist["validation"]
    for entry in dev:
        _link(entry["image"], raw / "imagesTr" / f"{entry['case']}_0000.nii.gz")
        _link(entry["label"], raw / "labelsTr" / f"{entry['case']}.nii.gz")
    for entry in datalist["test"]:
        _link(entry["image"], raw / "imagesTs" / f"{entry['case']}_0000.nii.gz")
    labels = {("background" if int(k) == 0 else name): int(k) for k, name in datalist["labels"].items()}
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": labels,
                "numTraining": len(dev),
                "file_ending": ".nii.gz",
                "name": DATASET_NAME,
            },
            indent=1,
        )
    )
    env = {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
    }
    return RawDataset(
        root=root,
        raw=raw,
        images_ts=raw / "imagesTs",
        train_cases=[e["case"] for e in datalist["training"]],
        val_cases=[e["case"] for e in datalist["validation"]],
        test_entries=list(datalist["test"]),
        env=env,
    )


@dataclass(frozen=True)
class NnunetRun:
    """Wall times (s) of one nnU-Net run, where its test predictions are, and what it planned and trained."""

    preprocess_s: float
    train_s: float
    predict_s: float
    predictions: dict[str, Path]
    plan: dict
    training: dict  # epoch_seconds, iterations, seconds_per_iteration (see _training_log)
    nnunet_version: str


def _run(cmd: Sequence[str], env: Mapping[str, str], log: Path) -> float:
    """Run one nnU-Net console script, stdout/stderr to ``log``; returns its wall time in s."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return time.perf_counter() - start


def _plan_summary(preprocessed: Path) -> dict:
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    conf = plans["configurations"][CONFIGURATION]
    keys = ("patch_size", "batch_size", "spacing", "median_image_size_in_voxels", "normalization_schemes")
    summary = {k: conf.get(k) for k in keys}
    summary["stages"] = conf.get("architecture", {}).get("arch_kwargs", {}).get("n_stages")
    return summary


def _training_log(fold_dir: Path) -> dict:
    """Epoch times (s), training iterations done and mean s per iteration, from nnU-Net's training log."""
    epoch_seconds, iterations, per_iteration = [], 0, None
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        for line in log.read_text().splitlines():
            if "Epoch time:" in line:
                epoch_seconds.append(float(line.split("Epoch time:")[1].split()[0]))
            elif "iterations done," in line:  # nnUNetTrainer_TimeBudget's per-epoch summary
                words = line.split("time budget:")[1].split()
                iterations, per_iteration = int(words[0]), float(words[5])
    return {"epoch_seconds": epoch_seconds, "iterations": iterations, "seconds_per_iteration": per_iteration}


def run_nnunet(
    venv_dir: Path,
    data: RawDataset,
    *,
    budget_s: float = 1800.0,
    threads: int = 2,
    da_workers: int = 0,
    iters_per_epoch: int | None = None,
    disable_tta: bool = False,
) -> NnunetRun:
    """Plan + preprocess, train fold 0 (our split) within ``budget_s`` on CPU, predict the test cases.

    ``iters_per_epoch`` shortens nnU-Net's 250-iteration epochs (smoke runs only).
    """
    bin_dir = Path(venv_dir) / "bin"
    threads_s = str(threads)
    env = {
        **os.environ,
        **data.env,
        "OMP_NUM_THREADS": threads_s,
        "MKL_NUM_THREADS": threads_s,
        "nnUNet_n_proc_DA": threads_s,  # the planner also sets torch threads from it: only training gets da_workers
        "nnUNet_compile": "false",
        "nnUNet_def_n_proc": threads_s,
    }
    env.pop("CLINSEG_NNUNET_ITERS", None)
    if iters_per_epoch:
        env["CLINSEG_NNUNET_ITERS"] = str(iters_per_epoch)
    logs = data.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    preprocess_s = _run(
        [
            str(bin_dir / "nnUNetv2_plan_and_preprocess"),
            "-d",
            str(DATASET_ID),
            "-c",
            CONFIGURATION,
            "--verify_dataset_integrity",
            "-np",
            threads_s,
            "-npfp",
            threads_s,
        ],
        env,
        logs / "plan_and_preprocess.log",
    )
    preprocessed = Path(data.env["nnUNet_preprocessed"]) / DATASET_NAME
    (preprocessed / "splits_final.json").write_text(
        json.dumps([{"train": data.train_cases, "val": data.val_cases}], indent=1)
    )
    results = Path(data.env["nnUNet_results"]) / DATASET_NAME
    shutil.rmtree(results / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}", ignore_errors=True)

    train_env = {
        **env,
        "nnUNet_n_proc_DA": str(da_workers),
        "CLINSEG_NNUNET_DEADLINE": str(time.time() + budget_s),
    }
    train_s = _run(
        [
            str(bin_dir / "nnUNetv2_train"),
            str(DATASET_ID),
            CONFIGURATION,
            "0",
            "-tr",
            TRAINER,
            "-device",
            "cpu",
        ],
        train_env,
        logs / "train.log",
    )
    fold_dir = results / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}" / "fold_0"

    out = data.root / "predictions"
    shutil.rmtree(out, ignore_errors=True)
    predict = [
        str(bin_dir / "nnUNetv2_predict"),
        "-i",
        str(data.images_ts),
        "-o",
        str(out),
        "-d",
        str(DATASET_ID),
        "-c",
        CONFIGURATION,
        "-tr",
        TRAINER,
        "-f",
        "0",
        "-chk",
        "checkpoint_final.pth",
        "-device",
        "cpu",
        "-npp",
        "1",
        "-nps",
        "1",
    ]
    predict_s = _run(predict + (["--disable_tta"] if disable_tta else []), env, logs / "predict.log")
    predictions = {e["case"]: out / f"{e['case']}.nii.gz" for e in data.test_entries}
    missing = [c for c, p in predictions.items() if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"nnU-Net wrote no prediction for {len(missing)} test case(s) in {out}: {missing[:5]}"
        )
    return NnunetRun(
        preprocess_s=preprocess_s,
        train_s=train_s,
        predict_s=predict_s,
        predictions=predictions,
        plan=_plan_summary(preprocessed),
        training=_training_log(fold_dir),
        nnunet_version=_nnunet_version(bin_dir / "python") or "?",
    )


def _load_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def dice_per_label(
    predictions: Mapping[str, str | Path] | str | Path,
    test_entries: Sequence[Mapping[str, str]],
    labels: Sequence[int] | Mapping[str, Sequence[int]] = (1, 2),
    *,
    atol_mm: float = 1e-3,
) -> dict:
    """Dice per case and label (or region) of predicted label maps against ``test_entries``' ``label`` files.

    Args:
        predictions: ``{case: prediction path}``, or a folder holding ``<case>.nii.gz`` per test case.
        test_entries: datalist entries with ``case`` and ``label`` (the reference, on the original grid).
        labels: label values scored, or regions ``{name: label values}`` scored as the union of their values
            (BRATS' whole tumour ``{"whole_tumour": [1, 2, 3, 4]}``); a label or region absent from both
            prediction and reference scores 1.0.
        atol_mm: tolerance on affine entries (mm) for "same grid".

    Returns:
        ``{"cases": {case: {label: dice}}, "mean": {label: mean over cases}, "mean_all": mean of the label means}``.

    Raises:
        FileNotFoundError: a test case has no prediction. ValueError: a prediction is not on its reference's grid
        (shape or affine), naming the file.
    """
    if not isinstance(predictions, Mapping):
        folder = Path(predictions)
        predictions = {e["case"]: folder / f"{e['case']}.nii.gz" for e in test_entries}
    classes = (
        {name: list(values) for name, values in labels.items()}
        if isinstance(labels, Mapping)
        else {int(label): [int(label)] for label in labels}
    )
    per_case: dict[str | int, dict[str | int, float]] = {}
    for entry in test_entries:
        case = entry["case"]
        pred_path = Path(predictions[case]) if case in predictions else None
        if pred_path is None or not pred_path.is_file():
            raise FileNotFoundError(f"no prediction for test case {case!r}: {pred_path}")
        pred, pred_affine = _load_label(pred_path)
        ref, ref_affine = _load_label(Path(entry["label"]))
        pred = np.squeeze(pred)
        if pred.shape != ref.shape:
            raise ValueError(
                f"{pred_path}: shape {pred.shape} differs from reference {entry['label']} {ref.shape}"
            )
        if not np.allclose(pred_affine, ref_affine, atol=atol_mm):
            raise ValueError(f"{pred_path}: affine differs from reference {entry['label']} (not on its grid)")
        pred = np.rint(pred).astype(np.int64)
        ref = np.rint(ref).astype(np.int64)
        scores = {}
        for name, values in classes.items():
            p, r = np.isin(pred, values), np.isin(ref, values)
            denom = int(p.sum()) + int(r.sum())
            scores[name] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, r).sum()) / denom
        per_case[case] = scores
    mean = {name: float(np.mean([s[name] for s in per_case.values()])) for name in classes}
    return {"cases": per_case, "mean": mean, "mean_all": float(np.mean(list(mean.values())))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", type=Path, required=True, help="dataset.json written by clinseg import")
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net raw/preprocessed/results folders")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--budget", type=float, default=1800.0, help="training wall-clock budget (s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--da-workers", type=int, default=0, help="nnUNet_n_proc_DA")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="smoke runs only (nnU-Net: 250)")
    parser.add_argument("--disable-tta", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    venv_dir = ensure_nnunet_venv(args.venv)
    data = prepare_raw_dataset(args.datalist, args.work)
    run = run_nnunet(
        venv_dir,
        data,
        budget_s=args.budget,
        threads=args.threads,
        da_workers=args.da_workers,
        iters_per_epoch=args.iters_per_epoch,
        disable_tta=args.disable_tta,
    )
    dice = dice_per_label(run.predictions, data.test_entries)
    report = {
        "nnunetv2": run.nnunet_version,
        "plan": run.plan,
        **run.training,
        "preprocess_s": round(run.preprocess_s, 1),
        "train_s": round(run.train_s, 1),
        "predict_s": round(run.predict_s, 1),
        "dice_mean": dice["mean"],
        "dice_mean_all": dice["mean_all"],
        "test_cases": len(dice["cases"]),
    }
    (Path(args.work) / "nnunet_report.json").write_text(json.dumps(report, indent=1))
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
