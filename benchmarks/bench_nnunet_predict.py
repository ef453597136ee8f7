"""``clinseg predict nnunet:PATH`` against ``nnUNetv2_predict`` on one model folder and the same images.

    python benchmarks/bench_nnunet_predict.py --hippocampus ../shared/data/hippocampus --cases 20 --repeats 3

The model folder is planned by nnU-Net on the data (``nnUNetv2_extract_fingerprint``, ``nnUNetv2_plan_experiment``)
and given seeded random weights (:func:`pipeline.synthetic.nnunet_model.random_model_folder`): the masks are not
anatomy, but both sides run the same plans, network, preprocessing and resampling, which is what is compared.
With ``--hippocampus``, the first ``--plan-cases`` MSD cases are planned on and the next ``--cases`` predicted;
without, tiny synthetic phantoms. Both sides run as their console scripts (process start, model loading, reading
and writing included), one network thread (``nnUNet_def_n_proc=1``, ``OMP_NUM_THREADS=1``), the same TTA, in
alternating order; fastest of ``--repeats``. clinseg writes its usual outputs (mask, volumes, preview, QC,
reports); ``nnUNetv2_predict`` its masks with one preprocessing and one export worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synthetic.nnunet_model import nnunet_env, random_model_folder, write_raw_dataset  # noqa: E402
from pipeline.synthetic.phantoms import make_phantom  # noqa: E402
from transforms.io.nifti_write import write_nifti  # noqa: E402


def hippocampus_raw(source: Path, raw_root: Path, plan_cases: int, cases: int) -> tuple[Path, Path]:
    """``raw_root/Dataset004_Hippocampus`` (links) from the first ``plan_cases`` MSD cases, and a folder of the
    next ``cases`` images as ``NAME_0000.nii.gz``."""
    msd = json.loads((source / "dataset.json").read_text())
    entries = sorted(msd["training"], key=lambda e: e["image"])
    raw = raw_root / "Dataset004_Hippocampus"
    images = raw_root.parent / "images"
    for sub in (raw / "imagesTr", raw / "labelsTr", images):
        sub.mkdir(parents=True, exist_ok=True)
    for entry in entries[:plan_cases]:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        (raw / "imagesTr" / f"{name}_0000.nii.gz").symlink_to((source / entry["image"]).resolve())
        (raw / "labelsTr" / f"{name}.nii.gz").symlink_to((source / entry["label"]).resolve())
    for entry in entries[plan_cases : plan_cases + cases]:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        (images / f"{name}_0000.nii.gz").symlink_to((source / entry["image"]).resolve())
    labels = {("background" if int(k) == 0 else v): int(k) for k, v in msd["labels"].items()}
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": plan_cases, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return raw, images


def synthetic_images(folder: Path, cases: int) -> Path:
    """``cases`` oblique phantom CTs not seen in planning."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        phantom = make_phantom(100 + i, shape=(40, 36, 16), spacing=(1.5, 1.5, 3.0), oblique=True)
        write_nifti(phantom.ct.astype(np.int16), phantom.affine, folder / f"case_{i:03d}_0000.nii.gz")
    return folder


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def agreement(images: Path, ours: Path, theirs: Path) -> tuple[float, float, int, list[int]]:
    """Pooled voxel agreement, the worst case's, affine mismatches, labels nnU-Net predicted."""
    same = total = mismatched = 0
    worst = 1.0
    labels: set[int] = set()
    for image in sorted(images.glob("*_0000.nii.gz")):
        case = image.name.removesuffix("_0000.nii.gz")
        a, b = nib.load(ours / case / "seg.nii.gz"), nib.load(theirs / f"{case}.nii.gz")
        mismatched += a.shape != nib.load(image).shape or not np.allclose(a.affine, nib.load(image).affine, atol=1e-4)
        x, y = np.asarray(a.dataobj), np.asarray(b.dataobj)
        same, total = same + int((x == y).sum()), total + x.size
        worst = min(worst, float((x == y).mean()))
        labels |= {int(v) for v in np.unique(y)}
    return same / total, worst, mismatched, sorted(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hippocampus", type=Path, help="MSD Task04 folder (default: synthetic phantoms)")
    parser.add_argument("--plan-cases", type=int, default=40)
    parser.add_argument("--cases", type=int, default=10, help="images predicted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", action="store_true", help="mirroring on both sides (default: off on both)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--clinseg-variant", action="append", default=[], metavar="FLAGS",
                        help="also time clinseg with these extra flags, e.g. --clinseg-variant=--no-preview")  # fmt: skip
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_nnunet_"))
    env = nnunet_env(work / "nnunet")
    env.update({"OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    if args.hippocampus:
        raw, images = hippocampus_raw(args.hippocampus, Path(env["nnUNet_raw"]), args.plan_cases, args.cases)
        data = f"MSD Task04 hippocampus: planned on the first {args.plan_cases} cases, {args.cases} next predicted"
    else:
        raw = write_raw_dataset(Path(env["nnUNet_raw"]), 901, "Phantom", cases=3)
        images = synthetic_images(work / "images", args.cases)
        data = f"synthetic phantoms 40x36x16: planned on 3, {args.cases} others predicted"
    model = random_model_folder(raw, env, folds=(0,))
    bin_dir = Path(sys.executable).parent
    ours_dir, theirs_dir = work / "clinseg", work / "nnunet_out"
    ours = [sys.executable, "-m", "pipeline.cli", "predict", f"nnunet:{model}", "--input", str(images), "--output",
            str(ours_dir), "--folds", "0", "--device", "cpu", "--quiet", "--overwrite"]  # fmt: skip
    ours += ["--tta"] if args.tta else []
    theirs = [str(bin_dir / "nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(theirs_dir),
              "-m", str(model), "-f", "0", "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1"]  # fmt: skip
    theirs += [] if args.tta else ["--disable_tta"]
    variants = [(f"clinseg {flags}", [*ours[:8], str(work / f"clinseg_{i}"), *ours[9:], *flags.split()])
                for i, flags in enumerate(args.clinseg_variant)]  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in ["clinseg", "nnunet", *(n for n, _ in variants)]}
    for i in range(args.repeats):
        order = [("clinseg", ours), ("nnunet", theirs), *variants]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(cmd, env))
    pooled, worst, mismatched, labels = agreement(images, ours_dir, theirs_dir)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": data, "tta": args.tta,
        "cases": args.cases, "repeats": args.repeats, "seconds": times, "fastest_s": best,
        "ratio_clinseg_over_nnunet": best["clinseg"] / best["nnunet"],
        "ratio_variants_over_nnunet": {name: best[name] / best["nnunet"] for name, _ in variants},
        "voxel_agreement_pooled": pooled, "voxel_agreement_worst_case": worst, "grid_mismatches": mismatched,
        "labels_predicted_by_nnunet": labels, "model": str(model), "cpu_count": os.cpu_count(),
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
