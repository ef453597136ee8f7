"""Real-data accuracy: clinseg (import -> plan -> train -> predict, no config edits) against nnU-Net v2 on the MSD
hippocampus task, same 80/20 patient split, same CPU, same wall-clock training budget, in one run.

    python benchmarks/bench_hippocampus.py --work /tmp/hippo-bench --budget 30m

Split: ``clinseg import`` (seed 0): 40 test cases held out (20 %), 128 training + 32 validation. clinseg trains on
training and validates on validation; nnU-Net trains fold 0 of a ``splits_final.json`` with the same two lists
(:mod:`hippocampus_nnunet`). Both predict the 40 test cases onto their own grids, scored by the same
:func:`hippocampus_nnunet.dice_per_label`. Each side's training gets ``--budget`` of wall-clock time with
``--threads`` torch threads; planning, preprocessing and prediction are timed apart. ``--skip-nnunet`` runs
our side alone; ``--skip-clinseg`` the reference alone (a side already in ``WORK/results.json`` is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hippocampus_nnunet import (
    DEFAULT_VENV,
    dice_per_label,
    ensure_nnunet_venv,
    prepare_raw_dataset,
    run_nnunet,
)

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "hippocampus"


def clinseg_cli(args: list[str], threads: int, cwd: Path) -> float:
    """Run ``clinseg ARGS`` with ``threads`` torch threads; seconds taken. Output goes to ``cwd/clinseg.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    start = time.perf_counter()
    with open(cwd / "clinseg.log", "a") as log:
        log.write(f"\n$ clinseg {' '.join(args)}\n")
        log.flush()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", *args],
            check=False,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        raise RuntimeError(
            f"clinseg {args[0]} failed with exit code {done.returncode}; see {cwd / 'clinseg.log'}"
        )
    return time.perf_counter() - start


def run_clinseg(datalist: Path, work: Path, budget_s: float, threads: int) -> dict:
    """Plan, train and predict with clinseg's CLI exactly as a user would; timings, plan and Dice."""
    bundle, pred = work / "bundle", work / "predictions"
    plan_s = clinseg_cli(["plan", str(datalist), "--out", str(bundle), "--time-budget", f"{budget_s}s",
                       "--threads", str(threads)], threads, work)  # fmt: skip
    train_s = clinseg_cli(["train", str(bundle)], threads, work)
    predict_s = clinseg_cli(["predict", str(bundle), "--input", str(datalist), "--split", "test", "--output", str(pred),
                          "--no-preview", "--quiet", "--overwrite"], threads, work)  # fmt: skip
    test = json.loads(datalist.read_text())["test"]
    dice = dice_per_label({e["case"]: pred / e["case"] / "seg.nii.gz" for e in test}, test)
    plan = json.loads((bundle / "configs" / "plan.json").read_text())
    summary = [
        line for line in (work / "clinseg.log").read_text().splitlines() if "best val_mean_dice" in line
    ]
    epochs = [line for line in (work / "clinseg.log").read_text().splitlines() if "| val_mean_dice" in line]
    return {"plan_s": plan_s, "train_s": train_s, "predict_s": predict_s, "dice": dice, "plan": {
        "patch": plan["patch"], "spacing": plan["spacing"], "network": plan["network"]["args"],
        "batch_size": plan["training"]["batch_size"], "max_epochs": plan["training"]["max_epochs"],
        "step_s": plan["network"]["step_s"]},
        "training": {"summary": summary[-1] if summary else None, "last_epoch": epochs[-1] if epochs else None}}  # fmt: skip


def _row(name: str, side: dict, train_key: str = "train_s") -> str:
    d = side["dice"]["mean"]
    return (
        f"| {name} | {d['1']:.4f} | {d['2']:.4f} | {side['dice']['mean_all']:.4f} | {side[train_key]:.0f} | "
        f"{side.get('plan_s', side.get('preprocess_s', 0)):.0f} | {side['predict_s']:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--budget", default="30m", help="training wall-clock budget per side (90s, 30m, 1h)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="nnU-Net's own virtual environment")
    parser.add_argument("--skip-nnunet", action="store_true")
    parser.add_argument("--skip-clinseg", action="store_true")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from pipeline.core.duration import parse_duration
    from pipeline.datasets.importer import import_dataset

    budget_s = parse_duration(args.budget)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    import_dataset(SOURCE, work / "data")
    datalist = work / "data" / "dataset.json"
    previous = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    results: dict = {k: previous[k] for k in ("clinseg", "nnunet") if k in previous}
    results.update(
        date=date.today().isoformat(),
        budget_s=budget_s,
        threads=args.threads,
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        split="clinseg import seed 0: 128 training / 32 validation / 40 test",
    )
    if not args.skip_clinseg:
        (work / "clinseg").mkdir(exist_ok=True)
        results["clinseg"] = run_clinseg(datalist, work / "clinseg", budget_s, args.threads)
        (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if not args.skip_nnunet:
        venv_dir = ensure_nnunet_venv(args.venv)
        raw = prepare_raw_dataset(datalist, work / "nnunet")
        run = run_nnunet(venv_dir, raw, budget_s=budget_s, threads=args.threads)
        results["nnunet"] = {
            "version": run.nnunet_version, "preprocess_s": run.preprocess_s, "train_s": run.train_s,
            "predict_s": run.predict_s, "plan": run.plan, "training": run.training,
            "dice": dice_per_label(run.predictions, json.loads(datalist.read_text())["test"]),
        }  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    results = json.loads((work / "results.json").read_text())  # label keys as strings on both sides
    print(
        "| pipeline | Dice anterior | Dice posterior | mean | training s | planning/preprocessing s | predict s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("clinseg", "nnunet"):
        if name in results:
            print(_row(name, results[name]))
    if "clinseg" in results and "nnunet" in results:
        ratio = results["clinseg"]["dice"]["mean_all"] / max(results["nnunet"]["dice"]["mean_all"], 1e-9)
        print(f"mean Dice ratio clinseg / nnU-Net: {ratio:.3f}")
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
