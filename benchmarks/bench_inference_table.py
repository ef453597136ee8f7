"""One run, one machine: cases/min and peak RSS of the naive MONAI loop, ``clinseg predict`` per backend and
precision, and ``nnUNetv2_predict`` with a network of the same size and patch, on the same CT folder; then the same
rows on one large CT (peak RSS for the 1.5 GB goal).

    PYTHONPATH=. python benchmarks/bench_inference_table.py --cases 3 --shape 256 256 64 --fit-steps 20

Extends ``bench_inference.py`` (its phantoms, network fit and naive loop) to the issue-21 table. Every row is
its command-line program run end to end in a fresh process (start, imports, model loading, reading, writing,
clinseg's reports), with ``--threads`` threads; its peak RSS is that of its largest process, read by a small
wrapper (``getrusage(RUSAGE_CHILDREN)``), so this script's own memory is never counted. One untimed one-case run per
runtime and one of ``--backend auto`` first fill the export cache and record auto's measured choice, as any earlier
run on the machine would (both happen once per checkpoint, patch and machine). The bfloat16 row runs only where the
CPU has native bfloat16.

nnU-Net row: nnU-Net's own fingerprint and plans of a few phantoms, its ``3d_fullres`` configuration set to the
bundle's spacing and patch (``[2.5, 1.6, 1.6]`` mm, ``[32, 64, 64]``, z-y-x) and a PlainConvUNet of the bundle
network's depth and widths (4 stages, 8-64 features), seeded random weights; ``nnUNetv2_predict_from_modelfolder
--disable_tta -npp 1 -nps 1`` with its step size from ``--overlap``. Its masks come from another network, so no
Dice is given for it. Dice of the other rows: labels 1-2 against the naive loop's masks, worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_inference import BUNDLE, NaiveLoop, dice, make_checkpoint, phantom, write_folder  # noqa: E402

from pipeline.inference.backend_choice import resolve_amp  # noqa: E402
from pipeline.outputs.registry import SEG_NAME  # noqa: E402
from pipeline.synthetic.nnunet_model import nnunet_env, random_model_folder, write_raw_dataset  # noqa: E402
from transforms.io.nifti_write import write_nifti  # noqa: E402

# (row, program, extra flags): ``naive`` is this script's --naive-child, ``clinseg`` clinseg predict, ``nnunet``.
ROWS = [
    ("naive MONAI loop (float32)", "naive", []),
    ("clinseg predict (defaults: torch, layout measured, float32 without native bfloat16, uncertainty on)", "clinseg", []),
    ("clinseg --backend auto (its recorded choice)", "clinseg", ["--backend", "auto"]),
    ("clinseg --no-uncertainty (one network pass, as the naive loop)", "clinseg", ["--no-uncertainty"]),
    ("clinseg --backend torch --no-amp (float32: a CPU without bfloat16)", "clinseg", ["--backend", "torch", "--no-amp"]),
    ("clinseg --backend torch --amp (bfloat16 autocast)", "clinseg", ["--backend", "torch", "--amp"]),
    ("clinseg --backend onnxruntime", "clinseg", ["--backend", "onnxruntime"]),
    ("clinseg --backend openvino", "clinseg", ["--backend", "openvino"]),
    ("nnUNetv2_predict --disable_tta (same size network and patch)", "nnunet", []),
]  # fmt: skip

# Runs ``argv[1:]`` and prints its seconds and its largest process's peak RSS (kB): this wrapper is small, so the
# children it forks do not inherit a large peak (Linux keeps ``ru_maxrss`` across fork + exec).
_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)

_NNUNET_CONFIGURATION = {  # the bundle's spacing, roi and res_unet depth/widths, in nnU-Net's z-y-x order
    "spacing": [2.5, 1.6, 1.6],
    "patch_size": [32, 64, 64],
    "architecture": {
        "arch_kwargs": {
            "n_stages": 4, "features_per_stage": [8, 16, 32, 64], "kernel_sizes": [[3, 3, 3]] * 4,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2] * 4,
            "n_conv_per_stage_decoder": [2] * 3,
        }
    },
}  # fmt: skip


def nnunet_model(work: Path) -> Path:
    """A trained-model folder planned by nnU-Net on phantoms, configured as :data:`_NNUNET_CONFIGURATION`."""
    env = nnunet_env(work / "nnunet")
    raw = write_raw_dataset(Path(env["nnUNet_raw"]), 902, "BenchCT", cases=4, shape=(64, 64, 32))
    return random_model_folder(raw, env, configuration=_NNUNET_CONFIGURATION)


def nnunet_inputs(folder: Path, target: Path) -> Path:
    """``target/CASE_0000.nii.gz`` links to ``folder/CASE/ct.nii.gz`` (nnU-Net's input naming)."""
    target.mkdir(parents=True, exist_ok=True)
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        (target / f"{case.name}_0000.nii.gz").symlink_to((case / "ct.nii.gz").resolve())
    return target


def command(program: str, flags: list[str], folder: Path, out: Path, ctx: dict) -> list[str]:
    args = ctx["args"]
    window = ["--roi-size", *map(str, args.roi), "--overlap", str(ctx["overlap"]), "--sw-batch-size",
              str(args.sw_batch_size)]  # fmt: skip
    if program == "naive":
        return [sys.executable, __file__, "--naive-child", str(folder), str(out), str(ctx["checkpoint"]),
                "--threads", str(args.threads), "--roi", *map(str, args.roi), "--overlap", str(ctx["overlap"]),
                "--sw-batch-size", str(args.sw_batch_size)]  # fmt: skip
    if program == "clinseg":
        return [sys.executable, "-m", "pipeline.cli", "predict", str(BUNDLE), "--checkpoint", str(ctx["checkpoint"]),
                "--input", str(folder), "--output", str(out), "--device", "cpu", "--quiet", "--overwrite",
                *window, *flags]  # fmt: skip
    return [str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"), "-i", str(ctx["nnunet_in"][folder]),
            "-o", str(out), "-m", str(ctx["nnunet_model"]), "-f", "0", "-chk", "checkpoint_final.pth",
            "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta", "-step_size", str(1 - ctx["overlap"]),
            *flags]  # fmt: skip


def run_row(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the row's largest process)."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    seconds, kilobytes = done.stdout.split()[-2:]
    return float(seconds), float(kilobytes) / 1024


def worst_dice(folder: Path, out: Path, naive: Path) -> float:
    scores = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        ours = nib.load(out / case.name / SEG_NAME)
        ref = nib.load(naive / case.name / "ct_seg.nii.gz")
        np.testing.assert_allclose(ours.affine, nib.load(case / "ct.nii.gz").affine, atol=1e-4)
        scores.append(dice(np.asarray(ours.dataobj), np.asarray(ref.dataobj).squeeze()))
    return min(scores)


def table(title: str, folder: Path, work: Path, ctx: dict) -> list[dict]:
    """Runs every row on ``folder`` once, in :data:`ROWS` order; prints and returns the rows."""
    cases = sum(1 for p in folder.iterdir() if p.is_dir())
    print(f"\n{title}\n\n| run | cases/min | ratio vs naive | peak RSS (MB) | RSS vs naive | worst Dice vs naive |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = []
    for name, program, flags in ROWS:
        if "--amp" in flags and not resolve_amp(None, torch.device("cpu")):
            print(f"| {name} | skipped: no native bfloat16 on this CPU (emulated, it is slower than float32; "
                  "clinseg's default is then float32) | | | | |", flush=True)  # fmt: skip
            continue
        out = work / f"out_{len(rows)}"
        seconds, peak = run_row(command(program, flags, folder, out, ctx), ctx["env"])
        naive = rows[0] if rows else {"seconds": seconds, "peak_mb": peak, "out": out}
        score = worst_dice(folder, out, naive["out"]) if program == "clinseg" else None
        rows.append({"run": name, "seconds": seconds, "peak_mb": peak, "out": out, "dice": score})
        print(f"| {name} | {60 * cases / seconds:.2f} | {naive['seconds'] / seconds:.2f} | {peak:.0f} | "
              f"{peak / naive['peak_mb']:.2f} | {'-' if score is None else f'{score:.4f}'} |", flush=True)  # fmt: skip
    return rows


def naive_child(folder: Path, out: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    loop = NaiveLoop(checkpoint, args.roi, args.overlap, args.sw_batch_size, out, folder)
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        loop(case / "ct.nii.gz")


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":")[1].split())
            break
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.9, 0.9, 3.0])
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--fit-steps", type=int, default=20, help="Adam steps fitting the network to the phantom")
    parser.add_argument("--threads", type=int, default=2, help="threads of every row")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--memory-spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument("--memory-overlap", type=float, default=0.0, help="overlap of the large-CT table")
    parser.add_argument("--skip-memory", action="store_true", help="no large-CT table")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--naive-child", nargs=3, metavar=("FOLDER", "OUT", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        folder, out, checkpoint = map(Path, args.naive_child)
        naive_child(folder, out, checkpoint, args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_table_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), nnUNet_def_n_proc=str(args.threads),
               PYTHONPATH=str(BUNDLE.parents[1]))  # fmt: skip
    torch.set_num_threads(args.threads)
    checkpoint = make_checkpoint(work / "model.pt", fit_steps=args.fit_steps, roi=tuple(args.roi))
    folder = work / "in"
    write_folder(folder, args.cases, tuple(args.shape), tuple(args.spacing))
    ctx = {"args": args, "env": env, "checkpoint": checkpoint, "nnunet_model": nnunet_model(work), "nnunet_in": {}}
    ctx["nnunet_in"][folder] = nnunet_inputs(folder, work / "in_nnunet")
    print(f"CPU: {os.cpu_count()} cores ({cpu_flags()}); torch {torch.__version__}; {args.threads} threads per row")
    warm = work / "warm"
    write_folder(warm, 1, (96, 96, 32), tuple(args.spacing))
    for backend in ("onnxruntime", "openvino", "auto"):  # untimed: the export and auto's recorded choice
        run_row(command("clinseg", ["--backend", backend], warm, work / "warm_out", {**ctx, "overlap": 0.0}), env)
    shape = "x".join(map(str, args.shape))
    rows = {"folder": table(f"{args.cases} CTs {shape} int16, overlap {args.overlap}", folder, work,
                            {**ctx, "overlap": args.overlap})}  # fmt: skip
    if not args.skip_memory:
        big = work / "big"
        hu, affine = phantom(tuple(args.memory_shape), tuple(args.memory_spacing), seed=99)
        (big / "case_big").mkdir(parents=True)
        write_nifti(hu, affine, big / "case_big" / "ct.nii.gz")
        del hu
        ctx["nnunet_in"][big] = nnunet_inputs(big, work / "big_nnunet")
        shape = "x".join(map(str, args.memory_shape))
        rows["large_ct"] = table(f"one CT {shape} int16, overlap {args.memory_overlap}", big, work / "big_out",
                                 {**ctx, "overlap": args.memory_overlap})  # fmt: skip
    summary = {k: [{**r, "out": None} for r in v] for k, v in rows.items()}
    print("\n" + json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
