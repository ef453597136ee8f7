"""Benchmark: torch CLAHE (transforms.clahe) against skimage.exposure.equalize_adapthist, same run.

Cases: 3D box tiles on a volume, 2D on an image, and 2D slice by slice on the volume (skimage called per
slice). Runs alternate between the two implementations; the median of ``--repeats`` runs is reported, with
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

from transforms.clahe import clahe


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smoothed noise squared, rescaled to [0, 1] (a skewed, image-like histogram), float32."""
    a = gaussian_filter(np.random.default_rng(seed).random(shape, dtype=np.float32), 2.0)
    return (((a - a.min()) / (a.max() - a.min())) ** 2).astype(np.float32)


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _case(name: str, ref_fn, ours_fn, repeats: int) -> str:
    ref_times, our_times = [], []
    ref = ours = None
    for _ in range(repeats):  # alternate so both see the same machine load
        t, ref = _time(ref_fn)
        ref_times.append(t)
        t, ours = _time(ours_fn)
        our_times.append(t)
    t_ref, t_ours = statistics.median(ref_times), statistics.median(our_times)
    diff = float(np.abs(np.asarray(ref) - np.asarray(ours)).max())
    return f"| {name} | {t_ref:.3f} | {t_ours:.3f} | {t_ref / t_ours:.1f}x | {diff:.2e} |"


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

    vol, img = _volume(tuple(args.shape3d)), _volume(tuple(args.shape2d), seed=1)
    vol_t, img_t = torch.from_numpy(vol)[None], torch.from_numpy(img)[None]
    rows = [
        _case(f"3D box tiles {tuple(args.shape3d)}", lambda: equalize_adapthist(vol, **kw),
              lambda: clahe(vol_t, **kw)[0].numpy(), args.repeats),
        _case(f"2D {tuple(args.shape2d)}", lambda: equalize_adapthist(img, **kw),
              lambda: clahe(img_t, **kw)[0].numpy(), args.repeats),
        _case(f"2D slicewise {tuple(args.shape3d)}",
              lambda: np.stack([equalize_adapthist(vol[..., z], **kw) for z in range(vol.shape[-1])], -1),
              lambda: clahe(vol_t, slicewise=True, **kw)[0].numpy(), args.repeats),
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, load average {load}, "
          f"clip_limit={args.clip_limit}, nbins={args.nbins}, kernel_size=None, median of {args.repeats}")
    print("| case | skimage s | ours s | speedup | max abs diff |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
