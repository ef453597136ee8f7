"""Does QC find the bad cases? AUROC of ``qc.score`` for the poorly segmented test cases, Spearman correlation
with Dice, calibration error before/after temperature scaling, and the share of corrupted inputs flagged for
review against the share of clean ones, all in one run on one model.

    python benchmarks/bench_qc.py --bundle /tmp/qcb/bundle --datalist /tmp/qcb/hippo/dataset.json \\
        --work /tmp/qcb/bench [--corrupt-cases 10] [--threads 2]

Split: the datalist's ``test`` cases (hippocampus: ``clinseg import`` seed 0, 40 held-out cases) are scored
clean; the first ``--corrupt-cases`` of them are also corrupted in seven ways (:data:`CORRUPTIONS`) and scored
again. The model's ``qc_reference.json`` (training split) and temperature (validation split) are written first
when missing (``--refresh`` rewrites them). Dice is per label on each input's own grid, averaged over labels.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import stats as sstats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.datalist import load_datalist  # noqa: E402
from pipeline.inference.options import InferenceOptions  # noqa: E402
from pipeline.inference.predictor import Predictor  # noqa: E402
from pipeline.inference.qc_reference_file import QC_REFERENCE_NAME  # noqa: E402
from pipeline.qc.assess import assess_case  # noqa: E402
from pipeline.qc.model_reference import write_model_reference  # noqa: E402
from transforms.io.nifti_write import write_nifti  # noqa: E402


def _noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    span = np.percentile(image, 99) - np.percentile(image, 1)
    return image + rng.normal(0, 0.25 * span, image.shape)


def _bias(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    axes = np.meshgrid(*(np.linspace(-1, 1, n) for n in image.shape), indexing="ij")
    field = 0.8 * axes[0] + 0.5 * axes[1] ** 2 - 0.4 * axes[2]
    return image * np.exp(field)


def _ghosting(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kspace = np.fft.fftn(image)
    phase = np.ones(image.shape[1], dtype=complex)
    phase[::2] = np.exp(1j * 0.8)  # alternate phase-encode lines off by 0.8 rad: N/2 ghosts
    phase *= np.exp(1j * rng.normal(0, 0.3, image.shape[1]))  # motion between lines
    return np.abs(np.fft.ifftn(kspace * phase[None, :, None]))


def _inverted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.percentile(image, 99.5) - image, 0, None)  # T1-like contrast in a T2 model


def _rescaled(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image * 16.0  # 8-bit values stored as 12-bit


CORRUPTIONS = {
    "noise": _noise,
    "bias field": _bias,
    "ghosting/motion": _ghosting,
    "wrong modality (inverted contrast)": _inverted,
    "intensities rescaled x16": _rescaled,
    "orientation flipped in header": None,
    "field of view cropped to 45 %": None,
}


def corrupt(entry: dict, kind: str, out: Path, rng: np.random.Generator) -> dict:
    """Write a corrupted copy of ``entry``'s image (and its label, on the same voxels) into ``out``."""
    image, label = nib.load(entry["image"]), nib.load(entry["label"])
    data, seg, affine = np.asarray(image.dataobj, dtype=np.float32), np.asarray(label.dataobj), image.affine.copy()
    label_affine = label.affine.copy()
    if kind == "orientation flipped in header":
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = data.shape[0] - 1
        affine = affine @ flip  # the same voxels, labelled as mirrored: a header written with the wrong x sign
    elif kind.startswith("field of view"):
        keep = int(round(0.45 * data.shape[1]))
        start = (data.shape[1] - keep) // 2
        data, seg = data[:, start : start + keep], seg[:, start : start + keep]
        shift = np.eye(4)
        shift[1, 3] = start
        affine, label_affine = affine @ shift, label.affine @ shift
    else:
        data = CORRUPTIONS[kind](data, rng).astype(np.float32)
    name = f"{entry['case']}_{kind.split()[0].replace('/', '_')}"
    out.mkdir(parents=True, exist_ok=True)
    write_nifti(data, affine, out / f"{name}.nii.gz")
    # the label stays on the true grid of the voxels: Dice compares voxel arrays
    write_nifti(seg.astype(np.uint8), label_affine, out / f"{name}_label.nii.gz")
    return {"case": name, "image": str(out / f"{name}.nii.gz"), "label": str(out / f"{name}_label.nii.gz")}


def dice(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> float:
    values = []
    for k in labels:
        p, t = pred == k, truth == k
        total = p.sum() + t.sum()
        values.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
    return float(np.mean(values))


def score_case(predictor: Predictor, entry: dict) -> dict:
    start = time.perf_counter()
    case = predictor.load({predictor.input_keys[0]: entry["image"]})
    seg = predictor.segment(case)
    qc = assess_case(predictor.qc_reference, case.inputs, seg.labels, predictor.label_names, seg.uncertainty)
    seconds = time.perf_counter() - start
    truth = np.asarray(nib.load(entry["label"]).dataobj)
    return {
        "case": entry["case"], "dice": dice(np.asarray(seg.labels[0]), truth, list(predictor.label_names)),
        "score": qc.score, "review": qc.review, "findings": qc.as_dict()["findings"], "seconds": seconds,
    }  # fmt: skip


def auroc(scores: list[float], positive: list[bool]) -> float | None:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return None
    return float(sstats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--checkpoint", help="default: the bundle's models/model.pt")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--corrupt-cases", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refresh", action="store_true", help="rewrite the model's qc_reference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint or Path(args.bundle) / "models" / "model.pt")
    reference_s = None
    if args.refresh or not (checkpoint.parent / QC_REFERENCE_NAME).is_file():
        start = time.perf_counter()
        write_model_reference(args.bundle, checkpoint, args.datalist, device="cpu")
        reference_s = time.perf_counter() - start
    predictor = Predictor.from_bundle(args.bundle, checkpoint, options=InferenceOptions(device="cpu"))
    plain = Predictor.from_bundle(args.bundle, checkpoint, options=InferenceOptions(device="cpu", uncertainty=False))
    reference = predictor.qc_reference
    test = load_datalist(args.datalist, "test")
    clean = [score_case(predictor, e) for e in test]
    plain_s = []
    for e in test:  # the same cases without the uncertainty pass: what QC costs
        start = time.perf_counter()
        plain.segment(plain.load({plain.input_keys[0]: e["image"]}))
        plain_s.append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    corrupted = {}
    for kind in CORRUPTIONS:
        entries = [corrupt(e, kind, work / "corrupted", rng) for e in test[: args.corrupt_cases]]
        corrupted[kind] = [score_case(predictor, e) for e in entries]
    dices = [r["dice"] for r in clean]
    threshold = 0.80 if sum(d < 0.80 for d in dices) >= 3 else float(np.percentile(dices, 20))
    bad_corrupt = [r for rows in corrupted.values() for r in rows if r["dice"] < 0.70]
    results = {
        "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "threads": args.threads, "bundle": str(args.bundle), "test_cases": len(test),
        "reference_seconds": reference_s,
        "calibration": reference.get("calibration"), "temperature": reference.get("temperature"),
        "clean": {
            "mean_dice": float(np.mean(dices)), "bad_threshold": threshold,
            "bad_cases": int(sum(d < threshold for d in dices)),
            "auroc": auroc([r["score"] for r in clean], [d < threshold for d in dices]),
            "spearman_score_dice": float(sstats.spearmanr([r["score"] for r in clean], dices)[0]),
            "flagged": float(np.mean([r["review"] for r in clean])),
            "seconds_per_case_with_qc": float(np.median([r["seconds"] for r in clean])),
            "seconds_per_case_without_uncertainty": float(np.median(plain_s)),
        },
        "corrupted": {
            kind: {"cases": len(rows), "mean_dice": float(np.mean([r["dice"] for r in rows])),
                   "below_0.70": int(sum(r["dice"] < 0.70 for r in rows)),
                   "flagged": float(np.mean([r["review"] for r in rows])),
                   "example_findings": rows[0]["findings"][:3]}
            for kind, rows in corrupted.items()
        },
        "corrupted_below_0.70_flagged": float(np.mean([r["review"] for r in bad_corrupt])) if bad_corrupt else None,
        "corrupted_below_0.70": len(bad_corrupt),
        "per_case": {"clean": clean, "corrupted": corrupted},
    }  # fmt: skip
    (work / "bench_qc.json").write_text(json.dumps(results, indent=1))
    c = results["clean"]
    print(f"clean test cases: {len(test)}, mean Dice {c['mean_dice']:.3f}; bad = Dice < {threshold:.3f}: "
          f"{c['bad_cases']}; AUROC {c['auroc']}; Spearman(score, Dice) {c['spearman_score_dice']:.3f}; "
          f"flagged {c['flagged']:.1%}")  # fmt: skip
    cal = results["calibration"] or {}
    if "ece_before" in cal:
        print(f"temperature {results['temperature']:.3f}: ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, "
              f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f} ({cal['cases']} validation cases)")
    print("| corruption | cases | mean Dice | Dice < 0.70 | flagged |\n|---|---|---|---|---|")
    for kind, row in results["corrupted"].items():
        print(f"| {kind} | {row['cases']} | {row['mean_dice']:.3f} | {row['below_0.70']} | {row['flagged']:.0%} |")
    print(f"corrupted with Dice < 0.70 flagged: {results['corrupted_below_0.70_flagged']} "
          f"of {results['corrupted_below_0.70']}; seconds/case {c['seconds_per_case_with_qc']:.2f} with QC, "
          f"{c['seconds_per_case_without_uncertainty']:.2f} without the uncertainty pass")


if __name__ == "__main__":
    main()
