"""Benchmark: our CLAHE (transforms.intensity.clahe) against skimage.exposure.equalize_adapthist, same run.

Cases: 3D box tiles on a volume, 2D on an image, and 2D slice by slice on the volume (skimage called per
slice). Our two backends are timed: ``numba`` (the CPU default when numba is installed; single-threaded
kernels) and ``torch`` (pure torch, the path GPU tensors take), with ``--threads`` torch threads. Runs
alternate between the implementations; the median of ``--repeats`` runs is reported, with
speedup = skimage time / our time and the maximum absolute difference of the outputs. Prints markdown rows.

    python benchmarks/bench_clahe.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.exposure import equalize_adapthist

import transforms.intensity.clahe_numba as clahe_numba
from transforms.intensity.clahe import clahe


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smoothed noise squared, rescaled to [0, 1] (a skewed, image-like histogram), float32."""
    a = gaussian_filter(np.random.default_rng(seed).random(shape, dtype=np.float32), 2.0)
    return (((a - a.min()) / (a.max() - a.min())) ** 2).astype(np.float32)


def _time(fn) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, np.asarray(out)


def _case(name: str, ref_fn, ours_fns: dict, repeats: int) -> str:
    """One markdown row: skimage time, then time, speedup and max abs difference for each of our backends."""
    times: dict[str, list[float]] = {"skimage": [], **{k: [] for k in ours_fns}}
    outs: dict[str, np.ndarray] = {}
    for _ in range(repeats):  # alternate so that all implementations see the same machine load
        for key, fn in [("skimage", ref_fn), *ours_fns.items()]:
            t, outs[key] = _time(fn)
            times[key].append(t)
    t_ref = statistics.median(times["skimage"])
    cells = [name, f"{t_ref:.3f}"]
    for key in ours_fns:
        t = statistics.median(times[key])
        diff = float(np.abs(outs["skimage"] - outs[key]).max())
        cells += [f"{t:.3f}", f"{t_ref / t:.1f}x", f"{diff:.1e}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape3d", type=int, nargs=3, default=(256, 256, 128))
    parser.add_argument("--shape2d", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--clip-limit", type=float, default=0.01)
    parser.add_argument("--nbins", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kw = {"kernel_size": None, "clip_limit": args.clip_limit, "nbins": args.nbins}
    backends = ["numba", "torch"] if clahe_numba.available() else ["torch"]

    vol, img = _volume(tuple(args.shape3d)), _volume(tuple(args.shape2d), seed=1)
    vol_t, img_t = torch.from_numpy(vol)[None], torch.from_numpy(img)[None]
    clahe(vol_t[:, :16, :16, :16], **kw)  # compile (or load) the numba kernels outside the timings
    clahe(img_t[:, :16, :16], **kw)

    def ours(x: torch.Tensor, **extra) -> dict:
        return {b: (lambda b=b: clahe(x, backend=b, **kw, **extra)[0].numpy()) for b in backends}

    def sk_slices() -> np.ndarray:
        return np.stack([equalize_adapthist(vol[..., z], **kw) for z in range(vol.shape[-1])], -1)

    n = args.repeats
    rows = [
        _case(f"3D box tiles {tuple(args.shape3d)}", lambda: equalize_adapthist(vol, **kw), ours(vol_t), n),
        _case(f"2D {tuple(args.shape2d)}", lambda: equalize_adapthist(img, **kw), ours(img_t), n),
        _case(f"2D slicewise {tuple(args.shape3d)}", sk_slices, ours(vol_t, slicewise=True), n),
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, torch threads {args.threads}, {platform.machine()}, load avg {load}, "
        f"clip_limit={args.clip_limit}, nbins={args.nbins}, kernel_size=None, median of {args.repeats}"
    )
    header = ["case", "skimage s"]
    header += [f"{h} ({b})" for b in backends for h in ("ours s", "speedup", "max diff")]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
