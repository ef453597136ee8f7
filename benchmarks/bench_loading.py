"""Loading speed: clinseg's DICOM series / NIfTI loader vs SimpleITK on the same synthetic 512x512xN CT.

Prints markdown rows ``| case | ours (s) | SimpleITK (s) | ratio ours/sitk |`` with medians of ``--reps`` runs.
SimpleITK's side is ``ImageSeriesReader`` (GDCM file names + Execute + GetArrayFromImage) and ``ReadImage`` +
``GetArrayFromImage``; ours is ``transforms.io.scan.load_scan`` returning a float32 HU MetaTensor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from pipeline.synthetic.dicom_series import write_dicom_series
from transforms.io.scan import load_scan
from transforms.io.nifti_write import write_nifti


def _median_time(fn, reps: int) -> float:
    fn()  # warm the page cache and imports
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sitk_series(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rng = np.random.default_rng(0)
    hu = (rng.integers(-1024, 2000, (args.size, args.size, args.slices)) // 25 * 25).astype(np.int16)
    affine = np.diag([0.75, 0.75, 1.5, 1.0])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        write_dicom_series(hu, affine, folder, file_names=[f"{k:08x}" for k in rng.permutation(args.slices)])
        nii = Path(tmp) / "ct.nii.gz"
        write_nifti(hu, affine, nii)
        np.testing.assert_array_equal(load_scan(folder).numpy()[0], _sitk_series(folder).transpose(2, 1, 0))
        rows = [
            ("DICOM series", lambda: load_scan(folder), lambda: _sitk_series(folder)),
            (
                "NIfTI .nii.gz",
                lambda: load_scan(nii),
                lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(nii))),
            ),
        ]
        shape = f"{args.size}x{args.size}x{args.slices}"
        print("| case | ours (s) | SimpleITK (s) | ratio ours/sitk |")
        print("|---|---|---|---|")
        for name, ours, ref in rows:
            t_ours, t_ref = _median_time(ours, args.reps), _median_time(ref, args.reps)
            print(f"| {name} {shape} int16 | {t_ours:.3f} | {t_ref:.3f} | {t_ours / t_ref:.2f} |")


if __name__ == "__main__":
    main()
