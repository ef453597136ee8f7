"""Evaluation's surface scores: one surface-distance pass (``pipeline.evaluation.surface.surface_scores``) against
MONAI's three metric classes (``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric(symmetric=True)``,
``SurfaceDiceMetric``), same masks, same run.

    python benchmarks/bench_surface_metrics.py --brats ../shared/data/brats [--repeats 3] [--threads 1]

Masks: each BRATS subject's whole tumour (labels 1-4) as the reference, and three predictions of it: close (the
reference dilated by one voxel), ragged (20 % of the tumour's bounding box flipped at random) and speckled (2 % of
all voxels switched on at random, as an untrained or failing model gives), on the scan's own 240x240x155 grid. Fastest of
``--repeats``; the scores must be equal (relative 1e-6).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.evaluation.surface import surface_scores


def _monai_scores(pred: torch.Tensor, label: torch.Tensor, spacing: list[float], tolerance: float) -> dict:
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    pv, yv, common = pred[None, None], label[None, None], {"include_background": True, "reduction": "none"}
    return {
        "hd95_mm": float(HausdorffDistanceMetric(percentile=95, **common)(pv, yv, spacing=spacing)),
        "msd_mm": float(SurfaceDistanceMetric(symmetric=True, **common)(pv, yv, spacing=spacing)),
        "surface_dice": float(SurfaceDiceMetric([tolerance], **common)(pv, yv, spacing=spacing)),
    }


def _fastest(fn, repeats: int) -> tuple[float, dict]:
    best, out = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _predictions(label: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    close = ndimage.binary_dilation(label)
    ragged = label.copy()  # 20 % of the tumour's bounding box flipped
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(label))
    ragged[box] ^= rng.random(ragged[box].shape) < 0.2
    speckled = label | (rng.random(label.shape) < 0.02)  # 2 % of the scan's voxels on at random: a failing model
    return {"close": close, "ragged": ragged, "speckled": speckled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats", type=Path, default=REPO.parent / "shared" / "data" / "brats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--label-file", default="OTMultiClass.nii.gz", help="each subject's label map")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*", category=FutureWarning)
    rng = np.random.default_rng(0)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch threads {args.threads}, fastest of {args.repeats}")  # fmt: skip
    print("| subject | prediction | MONAI, 3 metrics (s) | one pass (s) | MONAI / one pass | scores equal |")
    print("|---|---|---|---|---|---|")
    subjects = sorted(p for p in args.brats.iterdir() if p.is_dir())[: args.subjects]
    for subject in subjects:
        image = nib.load(subject / args.label_file)
        label = np.asarray(image.dataobj) > 0
        spacing = [float(v) for v in image.header.get_zooms()[:3]]
        for kind, pred in _predictions(label, rng).items():
            p, y = torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(label.astype(np.float32))
            monai_s, expected = _fastest(partial(_monai_scores, p, y, spacing, 1.0), args.repeats)
            ours_s, got = _fastest(partial(surface_scores, p, y, spacing, 1.0), args.repeats)
            equal = all(np.isclose(got[k], expected[k], rtol=1e-6) for k in expected)
            print(f"| {subject.name} | {kind} | {monai_s:.2f} | {ours_s:.2f} | {monai_s / ours_s:.2f} | {equal} |")


if __name__ == "__main__":
    main()
