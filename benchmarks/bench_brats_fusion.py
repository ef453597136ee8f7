"""Multimodal MR on real scans: feature-level fusion against channel stacking, and region-based against label
training, on the 4 BRATS subjects, leave-one-subject-out, the same CPU budget per training, in one run.

    python benchmarks/bench_brats_fusion.py --work /tmp/brats-bench --budget 3m

Configurations: ``stacking`` (the two channels stacked into a U-Net, trained on the 4 labels), ``fusion`` (one
encoder per channel fused at every level, ``feature_fusion_unet``, same labels), ``regions`` (stacking trained
on the nested BRATS regions with one sigmoid output each, converted back to labels at inference).

Each configuration is planned once by ``clinseg plan`` (fingerprint of fold 0's training subjects; the plan is the
same for every fold: 1 mm grid, per-image z-score inside the brain, no dataset statistics) with the network it
names, then for each of the 4 folds trained by ``clinseg train`` on the 3 other subjects for ``--budget`` of
wall-clock time with ``--threads`` torch threads, and its final checkpoint (the polynomial LR ends at 0)
predicts the held-out subject onto its own grid. Validation monitors the first training subject only: no test
subject is ever seen before prediction. Scored as BRATS does, by region from the predicted label maps: whole
tumour (labels 1-4), tumour core (1, 3, 4), enhancing (4). A (configuration, fold) already in
``WORK/results.json`` is kept, so ``--configs`` adds configurations to an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hippocampus import clinseg_cli
from hippocampus_nnunet import dice_per_label

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "brats"
REGIONS = {"whole_tumour": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}
CONFIGS: dict[str, list[str]] = {  # name -> extra `clinseg plan` arguments
    "stacking": ["--network", "unet"],
    "fusion": ["--network", "feature_fusion_unet"],
    "regions": ["--network", "unet", "--regions", ";".join(f"{k}={','.join(map(str, v))}" for k, v in REGIONS.items())],
}


def fold_datalists(imported: Path, out: Path) -> list[Path]:
    """One datalist per held-out subject: test = that subject, training = the other three (validation: the first)."""
    content = json.loads(imported.read_text())
    cases = sorted(
        (e for split in ("training", "validation", "test") for e in content.get(split, [])), key=lambda e: e["case"]
    )
    paths = []
    for k, held_out in enumerate(cases):
        train = [e for e in cases if e is not held_out]
        fold = {**content, "training": train, "validation": train[:1], "test": [held_out]}
        fold.pop("folds", None)
        path = out / f"fold{k}" / "dataset.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fold, indent=1))
        paths.append(path)
    return paths


def run_fold(bundle: Path, datalist: Path, work: Path, budget_s: float, threads: int) -> dict:
    """Train ``bundle`` on ``datalist``'s training subjects, predict its test subject; Dice per region and times."""
    work.mkdir(parents=True, exist_ok=True)
    ckpt, pred = work / "models", work / "predictions"
    train_s = clinseg_cli(["train", str(bundle), "--dataset-dir", str(datalist.parent), "--ckpt-dir", str(ckpt),
                        "--time-budget", f"{budget_s}s"], threads, work)  # fmt: skip
    predict_s = clinseg_cli(["predict", str(bundle), "--checkpoint", str(ckpt / "model_final.pt"), "--input",
                          str(datalist), "--split", "test", "--output", str(pred), "--no-preview", "--quiet",
                          "--overwrite"], threads, work)  # fmt: skip
    test = json.loads(datalist.read_text())["test"]
    dice = dice_per_label({e["case"]: pred / e["case"] / "seg.nii.gz" for e in test}, test, REGIONS)
    lines = (work / "clinseg.log").read_text().splitlines()
    epochs = [line for line in lines if "| val_mean_dice" in line]
    return {"case": test[0]["case"], "train_s": train_s, "predict_s": predict_s, "dice": dice["mean"],
            "last_epoch": epochs[-1] if epochs else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--budget", default="5m", help="training wall-clock budget per fold (90s, 5m, 1h)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from pipeline.core.duration import parse_duration
    from pipeline.datasets.importer import import_dataset

    budget_s = parse_duration(args.budget)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    import_dataset(SOURCE, work / "data", channels="flair:MR=Flair_*;t1c:MR=T1c_*;label=OTMulti*",
                   structures="1=necrosis;2=edema;3=non-enhancing;4=enhancing", test_fraction=0.25,
                   folds=1)  # fmt: skip
    folds = fold_datalists(work / "data" / "dataset.json", work / "folds")
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"configs": {}}
    results.update(
        date=date.today().isoformat(), budget_s=budget_s, threads=args.threads,
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        split="leave one subject out: 4 folds, 3 training subjects (the first also validates) / 1 test",
    )  # fmt: skip
    for name in args.configs:
        side = results["configs"].setdefault(name, {"folds": {}})
        bundle = work / name / "bundle"
        if not (bundle / "configs" / "plan.json").is_file():
            (work / name).mkdir(parents=True, exist_ok=True)
            side["plan_s"] = clinseg_cli(["plan", str(folds[0]), "--out", str(bundle), "--time-budget", f"{budget_s}s",
                                       "--threads", str(args.threads), *CONFIGS[name]], args.threads, work / name)  # fmt: skip
            plan = json.loads((bundle / "configs" / "plan.json").read_text())
            side["plan"] = {"network": plan["network"]["name"], "args": plan["network"]["args"],
                            "step_s": plan["network"]["step_s"], "patch": plan["patch"],
                            "max_epochs": plan["training"]["max_epochs"]}  # fmt: skip
        for k, datalist in enumerate(folds):
            if str(k) in side["folds"]:
                continue
            side["folds"][str(k)] = run_fold(bundle, datalist, work / name / f"fold{k}", budget_s, args.threads)
            results_path.write_text(json.dumps(results, indent=1, default=str))
        side["mean"] = {r: float(np.mean([f["dice"][r] for f in side["folds"].values()])) for r in REGIONS}
        results_path.write_text(json.dumps(results, indent=1, default=str))
    print("| configuration | network (widths) | whole tumour | core | enhancing | per-fold whole tumour | "
          "training s/fold | predict s/fold |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, side in results["configs"].items():
        folds_done = side["folds"].values()
        per_fold = " / ".join(f"{f['dice']['whole_tumour']:.3f}" for f in folds_done)
        widths = side["plan"]["args"].get("channels") or side["plan"]["args"].get("features")
        print(f"| {name} | {side['plan']['network']} {widths} | {side['mean']['whole_tumour']:.4f} | "
              f"{side['mean']['core']:.4f} | {side['mean']['enhancing']:.4f} | {per_fold} | "
              f"{np.mean([f['train_s'] for f in folds_done]):.0f} | {np.mean([f['predict_s'] for f in folds_done]):.0f} |")  # fmt: skip
    if {"fusion", "stacking"} <= set(results["configs"]):
        ratio = results["configs"]["fusion"]["mean"]["whole_tumour"] / max(
            results["configs"]["stacking"]["mean"]["whole_tumour"], 1e-9
        )
        print(f"whole-tumour Dice ratio fusion / stacking: {ratio:.3f}")
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
