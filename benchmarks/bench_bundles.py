"""Train every bundle for the same small budget on synthetic data: validation Dice and wall time vs ct_organ_resunet3d.

    PYTHONPATH=. python benchmarks/bench_bundles.py --threads 2 --epochs 12 --cases 10

Each bundle runs its own ``train.yaml`` through ``pipeline.training.train.train_bundle`` (what ``clinseg train`` and
``python -m monai.bundle run`` run) for ``--epochs`` epochs with validation every ``--val-interval`` epochs,
SQLite MLflow tracking in the work folder, and its own defaults otherwise (batch size, patches per volume,
learning rate), except the 3D patch size ``--roi3d`` (the defaults are sized for larger volumes). 3D bundles
train on ``--cases`` synthetic CT/MR volumes of ``--shape3d`` voxels, the 2D bundle on as many 2D slices of
``--shape2d`` pixels. The fusion bundle runs both stages: ``fusion_pretrain.yaml`` (its key metric is the mean
SSIM of the fused image to CT and MR, not Dice) for the same number of epochs, then ``train.yaml`` from its
best checkpoint. Prints one markdown table; "time vs reference" is the wall time over ct_organ_resunet3d's,
measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.synthetic.phantoms import synthesize
from pipeline.core.tracking_uri import sqlite_uri
from pipeline.training.train import TrainResult, train_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
REFERENCE = "ct_organ_resunet3d"


def _train(
    bundle: str, config: str | list[str], dataset: Path, ckpt_dir: Path, args, **overrides
) -> tuple[TrainResult, float]:
    start = time.perf_counter()
    result = train_bundle(
        BUNDLES / bundle,
        dataset_dir=dataset,
        ckpt_dir=ckpt_dir,
        tracking_uri=sqlite_uri(ckpt_dir.parent / "mlflow.db"),
        max_epochs=args.epochs,
        overrides={"val_interval": args.val_interval, "seed": args.seed, **overrides},
        config=config,
    )
    return result, time.perf_counter() - start


def _row(label: str, result: TrainResult, seconds: float, reference_seconds: float, metric: str) -> str:
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in result.best_per_class.items()) or "-"
    return (
        f"| {label} | {metric} | {result.best_metric:.3f} | {per_class} | {result.best_epoch}/{result.epochs} "
        f"| {seconds:.0f} | {seconds / reference_seconds:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--val-interval", type=int, default=3)
    parser.add_argument(
        "--cases", type=int, default=10, help="synthetic patients per dataset (60/20/20 split)"
    )
    parser.add_argument("--shape3d", type=int, nargs=3, default=[64, 64, 24])
    parser.add_argument("--shape2d", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--roi3d", type=int, nargs=3, default=[32, 32, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_bundles-"))
    data3d = synthesize(work / "data3d", cases=args.cases, seed=args.seed, shape=tuple(args.shape3d)).parent
    data2d = synthesize(
        work / "data2d", cases=args.cases, seed=args.seed, spatial_dims=2, shape=tuple(args.shape2d)
    ).parent
    roi3d = list(args.roi3d)

    reference, ref_s = _train(REFERENCE, "train", data3d, work / "runs" / REFERENCE, args, roi_size=roi3d)
    rows = [_row(f"{REFERENCE} (reference)", reference, ref_s, ref_s, "val_mean_dice")]
    result, seconds = _train("ct_organ_attentionunet3d", "train", data3d, work / "runs" / "attention", args,
                             roi_size=roi3d)  # fmt: skip
    rows.append(_row("ct_organ_attentionunet3d", result, seconds, ref_s, "val_mean_dice"))
    result, seconds = _train("ct_lesion_denseunet2d", "train", data2d, work / "runs" / "dense2d", args)
    rows.append(_row("ct_lesion_denseunet2d (2D slices)", result, seconds, ref_s, "val_mean_dice"))
    stage1, s1 = _train("ctmr_fusion_seg3d", ["train", "fusion_pretrain"], data3d, work / "runs" / "fusion1", args,
                        roi_size=roi3d)  # fmt: skip
    rows.append(_row("ctmr_fusion_seg3d stage 1 (fusion_pretrain)", stage1, s1, ref_s, "val_fusion_ssim"))
    stage2, s2 = _train("ctmr_fusion_seg3d", "train", data3d, work / "runs" / "fusion2", args, roi_size=roi3d,
                        fusion_pretrain_checkpoint=str(stage1.best_checkpoint))  # fmt: skip
    rows.append(_row("ctmr_fusion_seg3d stage 2 (joint)", stage2, s2, ref_s, "val_mean_dice"))

    print(
        f"\n{args.epochs} epochs each, validation every {args.val_interval}; {args.cases} cases; work folder {work}\n"
    )
    print("| bundle | key metric | best | per class at best | best epoch | wall s | time vs reference |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
