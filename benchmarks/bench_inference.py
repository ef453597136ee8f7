"""Batch inference: clinseg's ``predict_folder`` vs a naive per-case MONAI loop, same network, weights, roi, overlap.

Naive loop (the MONAI tutorial pattern): ``LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd ->
ScaleIntensityRanged`` (the bundle's CT window), ``sliding_window_inference``, then ``Activationsd(softmax) ->
Invertd`` (probabilities resampled back linearly) ``-> AsDiscreted(argmax) -> SaveImaged``. Ours: the bundle's
``Predictor`` + ``predict_folder`` with its defaults (no prefetching on CPU, torch with the faster memory layout
measured on the patch, AMP where
the hardware has native bfloat16/float16, single-valued patches evaluated once, argmax of the linearly
resampled probabilities slab by slab, plus volumes.csv, preview.png and the reports that the naive loop does not
write).

Prints markdown rows: folder throughput (with ``--backend-rows`` also per ``--backend``, float32) (cases/min, ratio ours/naive, Dice between the two outputs) and the
peak RSS of one large synthetic CT, naive and ours per --memory-backends (each in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.batch.runner import predict_folder
from pipeline.core.bundle import Bundle
from pipeline.outputs.registry import SEG_NAME
from pipeline.core.checkpoint import NetworkSpec
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from transforms.io.nifti_write import write_nifti

BUNDLE = REPO / "bundles" / "ct_organ_resunet3d"


def phantom(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic abdominal CT (int16 HU) in air: body ellipse, organ sphere, bone; affine with LPS-like flips."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(
        *(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True
    )
    hu = np.full(shape, -1000, np.float32)
    body = (x / 0.75) ** 2 + (y / 0.5) ** 2 < 1
    hu[np.broadcast_to(body, shape)] = 30
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    hu[(x - cx) ** 2 + (y - cy) ** 2 + (z * 0.6) ** 2 < 0.09] = 90
    hu[np.broadcast_to((x**2 + (y + 0.35) ** 2 < 0.006), shape)] = 700
    hu += rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * shape[0] / 2, spacing[1] * shape[1] / 2, -spacing[2] * shape[2] / 2]
    return hu.astype(np.int16), affine


def write_folder(folder: Path, cases: int, shape, spacing) -> list[Path]:
    paths = []
    for i in range(cases):
        (folder / f"case_{i:03d}").mkdir(parents=True)
        hu, affine = phantom(shape, spacing, seed=i)
        path = folder / f"case_{i:03d}" / "ct.nii.gz"
        write_nifti(hu, affine, path)
        paths.append(path)
    return paths


def make_checkpoint(path: Path, *, seed: int = 0, fit_steps: int = 0, roi=(64, 64, 32)) -> Path:
    """The bundle's network with random weights (fixed seed), optionally fitted for ``fit_steps`` Adam steps
    to the phantom (organ sphere = 1, bone = 2) so its label maps are smooth, as a trained model's are."""
    parser = Bundle.at(BUNDLE).parser("inference")
    torch.manual_seed(seed)
    spec = NetworkSpec(parser.get_parsed_content("network_name"), parser.get_parsed_content("network_args"))
    net = spec.build()
    if fit_steps:
        _fit(net, parser, fit_steps, roi)
    torch.save({"model": net.state_dict(), "network": spec.state_dict()}, path)
    return path


def _fit(net: torch.nn.Module, parser, steps: int, roi) -> None:
    window = parser.get("window")
    lo = window["level"] - window["width"] / 2
    shape = tuple(max(r + 8, 2 * r) for r in roi)
    rng = np.random.default_rng(1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for step in range(steps):
        hu, _ = phantom(shape, (1.6, 1.6, 2.5), seed=1000 + step)
        label = np.where(hu > 400, 2, np.where((hu > 60) & (hu < 400), 1, 0))
        corner = [int(rng.integers(0, s - r + 1)) for s, r in zip(shape, roi)]
        box = tuple(slice(c, c + r) for c, r in zip(corner, roi))
        image = torch.from_numpy(np.clip((hu[box] - lo) / window["width"], 0, 1).astype(np.float32))[
            None, None
        ]
        target = torch.from_numpy(label[box].astype(np.int64))[None]
        loss = torch.nn.functional.cross_entropy(net(image), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


class NaiveLoop:
    """The per-case MONAI loop, with the bundle's spacing and window and the same network and sliding window."""

    def __init__(
        self, checkpoint: Path, roi, overlap: float, sw_batch_size: int, out: Path, root: Path
    ) -> None:
        from monai.transforms import (
            Activationsd,
            AsDiscreted,
            Compose,
            EnsureChannelFirstd,
            Invertd,
            LoadImaged,
            Orientationd,
            SaveImaged,
            ScaleIntensityRanged,
            Spacingd,
        )

        from pipeline.core.checkpoint import network_from_checkpoint

        parser = Bundle.at(BUNDLE).parser("inference")
        level, width = parser.get("window")["level"], parser.get("window")["width"]
        self.pre = Compose(
            [
                LoadImaged("image"),
                EnsureChannelFirstd("image"),
                Orientationd("image", axcodes="RAS", labels=None),
                Spacingd("image", pixdim=parser.get("spacing"), mode="bilinear"),
                ScaleIntensityRanged(
                    "image", a_min=level - width / 2, a_max=level + width / 2, b_min=0, b_max=1, clip=True
                ),
            ]
        )
        self.post = Compose(
            [
                Activationsd("pred", softmax=True),
                Invertd("pred", transform=self.pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                AsDiscreted("pred", argmax=True),
                SaveImaged(
                    "pred",
                    output_dir=str(out),
                    output_postfix="seg",
                    output_dtype=np.uint8,
                    resample=False,
                    data_root_dir=str(root),
                    separate_folder=False,
                    print_log=False,
                ),
            ]
        )
        self.net = network_from_checkpoint(checkpoint)
        self.roi, self.overlap, self.sw_batch_size = tuple(roi), overlap, sw_batch_size

    @torch.no_grad()
    def __call__(self, path: Path) -> None:
        from monai.inferers import sliding_window_inference

        data = self.pre({"image": str(path)})
        logits = sliding_window_inference(
            data["image"][None], self.roi, self.sw_batch_size, self.net, overlap=self.overlap, mode="gaussian"
        )
        data["pred"] = logits[0]
        self.post(data)


def dice(a: np.ndarray, b: np.ndarray, labels=(1, 2)) -> float:
    """Mean over labels of 2|A and B| / (|A| + |B|) (labels absent from both count as 1)."""
    scores = []
    for lab in labels:
        x, y = a == lab, b == lab
        total = x.sum() + y.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores))


def memory_child(side: str, path: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    """Run one case on one side (``naive``, or ``ours`` / ``ours:BACKEND``) and print its peak RSS in MB (this
    process only) and, for ours, the backend that ran."""
    torch.set_num_threads(args.threads)
    out = path.parent / f"out_{side.replace(':', '_')}"
    if side.startswith("ours"):
        src = path.parent / f"src_{side.replace(':', '_')}"
        (src / "big").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, src / "big" / "ct.nii.gz")
        options = InferenceOptions(
            roi_size=args.roi, overlap=args.memory_overlap, sw_batch_size=args.sw_batch_size, device="cpu",
            backend=side.partition(":")[2] or "auto",
        )  # fmt: skip
        predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=options)
        report = predict_folder(predictor, src, out)
        if report.counts()["ok"] != 1:
            raise RuntimeError(f"ours failed: {report.results}")
        print(f"BACKEND {predictor.backend_info()['backend']}")
    else:
        NaiveLoop(checkpoint, args.roi, args.memory_overlap, args.sw_batch_size, out, path.parent)(path)
    print(f"PEAK_MB {peak_rss_mb():.0f}")


def peak_rss_mb() -> float:
    """This process's peak resident size (``VmHWM``), in MB. Not ``getrusage``'s ``ru_maxrss``: Linux keeps that
    across ``fork`` + ``exec``, so a child would report the parent's peak whenever it is larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no fork-inherited peak there


def folder_rows(tmp: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    paths = write_folder(tmp / "in", args.cases, tuple(args.shape), tuple(args.spacing))
    naive = NaiveLoop(checkpoint, args.roi, args.overlap, args.sw_batch_size, tmp / "naive", tmp / "in")
    runs = [
        (
            "ours",
            InferenceOptions(
                roi_size=args.roi, overlap=args.overlap, sw_batch_size=args.sw_batch_size, device="cpu"
            ),
        )
    ]
    if args.prefetch_row:
        runs.append(("ours, prefetch 1", runs[0][1]))
    if args.no_amp_row:
        runs.append(("ours --no-amp", replace(runs[0][1], amp=False)))
    if args.crop_row:
        runs.append(("ours --crop-foreground", replace(runs[0][1], crop_foreground=True)))
    naive(paths[0])  # warm-up: page cache, kernels
    shutil.rmtree(tmp / "naive")
    start = time.perf_counter()
    for path in paths:
        naive(path)
    naive_s = time.perf_counter() - start
    for name, options in runs:
        predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=options)
        out = tmp / "".join(ch if ch.isalnum() else "_" for ch in name)
        start = time.perf_counter()
        report = predict_folder(
            predictor, tmp / "in", out, prefetch=1 if "prefetch 1" in name else args.prefetch
        )
        ours_s = time.perf_counter() - start
        if report.counts()["ok"] != len(paths):
            raise RuntimeError(f"{name}: not every case succeeded: {report.results}")
        scores = []
        for path in paths:
            case = path.parent.name
            a = np.asarray(nib.load(out / case / SEG_NAME).dataobj)
            b_img = nib.load(tmp / "naive" / case / "ct_seg.nii.gz")
            np.testing.assert_allclose(b_img.affine, nib.load(path).affine, atol=1e-4)
            scores.append(dice(a, np.asarray(b_img.dataobj).squeeze()))
        per_min = lambda s: 60 * len(paths) / s
        print(
            f"| {name} vs naive, {len(paths)} CTs {'x'.join(map(str, args.shape))} | {per_min(ours_s):.2f} | "
            f"{per_min(naive_s):.2f} | {naive_s / ours_s:.2f} | {min(scores):.4f} |"
        )


BACKEND_RUNS = [
    ("torch contiguous", {"backend": "torch", "layout": "contiguous"}),
    ("torch channels_last", {"backend": "torch", "layout": "channels_last"}),
    ("onnxruntime", {"backend": "onnxruntime"}),
    ("openvino", {"backend": "openvino"}),
    ("auto", {"backend": "auto"}),
]


def backend_rows(tmp: Path, checkpoint: Path, args: argparse.Namespace) -> None:
    """One row per backend, float32, same folder and run: cases/min, ratio vs torch contiguous (the first row),
    min Dice of the labels vs torch contiguous; ``auto`` names its choice. The export is done before timing."""
    folder = tmp / "in"
    if not folder.exists():
        write_folder(folder, args.cases, tuple(args.shape), tuple(args.spacing))
    base = InferenceOptions(
        roi_size=args.roi, overlap=args.overlap, sw_batch_size=args.sw_batch_size, device="cpu", amp=False
    )
    print("\n| backend (float32) | cases/min | ratio vs torch contiguous | min Dice vs torch contiguous |")
    print("|---|---|---|---|")
    ref_s, ref_out = None, None
    warm = Predictor.from_bundle(BUNDLE, checkpoint, options=replace(base, **BACKEND_RUNS[0][1]))
    predict_folder(warm, folder, tmp / "backend_warmup")  # imports, page cache, first-call costs
    for name, changes in BACKEND_RUNS:
        predictor = Predictor.from_bundle(BUNDLE, checkpoint, options=replace(base, **changes))
        info = predictor.backend_info()
        if info["fallback"]:
            print(f"| {name} | unavailable: {info['fallback']} | | |")
            continue
        out = tmp / f"backend_{name.replace(' ', '_')}"
        start = time.perf_counter()
        report = predict_folder(predictor, folder, out, prefetch=args.prefetch)
        seconds = time.perf_counter() - start
        if report.counts()["ok"] != args.cases:
            raise RuntimeError(f"{name}: not every case succeeded: {report.results}")
        ref_s, ref_out = (seconds, out) if ref_out is None else (ref_s, ref_out)
        scores = [
            dice(np.asarray(nib.load(out / c.name / SEG_NAME).dataobj), np.asarray(nib.load(c / SEG_NAME).dataobj))
            for c in sorted(ref_out.iterdir())
            if c.is_dir()
        ]
        label = f"auto -> {info['backend']} (ms {info['timings_ms']})" if name == "auto" else name
        print(f"| {label} | {60 * args.cases / seconds:.2f} | {ref_s / seconds:.2f} | {min(scores):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[320, 320, 64])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 3.0])
    parser.add_argument("--roi", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--prefetch", type=int, help="ours' prefetch (default: predict_folder's)")
    parser.add_argument("--crop-row", action="store_true", help="also time ours with --crop-foreground")
    parser.add_argument(
        "--no-amp-row", action="store_true", help="also time ours in float32 (default: AMP where native)"
    )
    parser.add_argument("--prefetch-row", action="store_true", help="also time ours with one case prefetched")
    parser.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        help="Adam steps fitting the random network to the phantom (0: pure random weights)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--memory-shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--memory-spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument(
        "--memory-overlap", type=float, default=0.0, help="overlap for the memory run (speed)"
    )
    parser.add_argument("--skip-folder", action="store_true")
    parser.add_argument(
        "--backend-rows", action="store_true", help="also time each --backend (torch layouts, ORT, OpenVINO)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-backends", nargs="+", default=["auto", "torch", "onnxruntime", "openvino"],
        help="--backend of each of ours' memory rows (auto: clinseg predict's default)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("SIDE", "CT", "CHECKPOINT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        side, path, checkpoint = args.memory_child
        memory_child(side, Path(path), Path(checkpoint), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp / "model.pt", fit_steps=args.fit_steps, roi=args.roi)
        if not args.skip_folder:
            print(
                "| run | ours (cases/min) | naive (cases/min) | ratio ours/naive | min Dice ours vs naive |"
            )
            print("|---|---|---|---|---|")
            folder_rows(tmp, checkpoint, args)
        if args.backend_rows:
            backend_rows(tmp, checkpoint, args)
        if not args.skip_memory:
            big = tmp / "big" / "ct.nii.gz"
            big.parent.mkdir()
            hu, affine = phantom(tuple(args.memory_shape), tuple(args.memory_spacing), seed=99)
            write_nifti(hu, affine, big)
            del hu
            peaks = {}
            for side in ("naive", *(f"ours:{b}" for b in args.memory_backends)):
                cmd = [
                    sys.executable, __file__, "--memory-child", side, str(big), str(checkpoint),
                    "--threads", str(args.threads), "--roi", *map(str, args.roi),
                    "--memory-overlap", str(args.memory_overlap), "--sw-batch-size", str(args.sw_batch_size),
                ]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                found = dict(ln.split(maxsplit=1) for ln in done.stdout.splitlines() if ln.startswith(("PEAK_MB", "BACKEND")))
                peaks[side] = (float(found["PEAK_MB"]), time.perf_counter() - start, found.get("BACKEND", "-"))
            shape = "x".join(map(str, args.memory_shape))
            print(f"\n| one {shape} int16 NIfTI CT on CPU | backend run | peak RSS (MB) | ratio vs naive | seconds |")
            print("|---|---|---|---|---|")
            for side, (mb, seconds, backend) in peaks.items():
                print(f"| {side} | {backend} | {mb:.0f} | {mb / peaks['naive'][0]:.2f} | {seconds:.0f} |")

if __name__ == "__main__":
    main()
