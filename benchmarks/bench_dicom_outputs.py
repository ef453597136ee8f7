"""DICOM outputs on a real planning CT grid: DICOM SEG and RTSTRUCT writing time for a noisy predicted mask.

The mask mimics an under-trained model on ``nsclc/LUNG1-001`` (512x512x134): two smooth structures plus 0.5 %
speckle voxels of each label spread over the volume. Same run, same mask:
- reference: writing the mask as NIfTI (``write_mask_nifti``), what every case writes anyway;
- ``write_dicom_seg`` (BINARY SEG, highdicom);
- ``write_rtstruct`` with its defaults (components and holes under 20 mm³ removed, at most 2,000 contours per
  structure), and with ``min_component_mm3=0, max_contours=None`` (the mask traced as it is).

Prints markdown rows ``| output | seconds | ratio to NIfTI | contours | MB |``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from pipeline.outputs.dicom_seg import write_dicom_seg
from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.rtstruct import write_rtstruct
from transforms.dicom.series import series_to_volume
from transforms.dicom.discovery import discover_series


def noisy_mask(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``(X, Y, Z)`` uint8: two smooth blobs (labels 1, 2) and 0.5 % speckle voxels of each label."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    mask = np.zeros(shape, np.uint8)
    mask[(((grid - centre) / np.array([120, 90, 40])[:, None, None, None]) ** 2).sum(0) < 1] = 1
    mask[(((grid - centre - np.array([0, 60, 0])[:, None, None, None]) / 20) ** 2).sum(0) < 1] = 2
    mask = ndimage.binary_dilation(mask > 0, iterations=1) * mask
    for label in (1, 2):
        mask[rng.random(shape) < 0.005] = label
    return mask


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patient", type=Path, default=Path(__file__).parents[1] / "../shared/data/nsclc/LUNG1-001")
    args = parser.parse_args()
    series = next(s for s in discover_series(args.patient) if s.modality == "CT")
    volume, affine, meta = series_to_volume(series)
    files = meta["dicom_files"]
    mask = noisy_mask(volume.shape)
    labels = {1: "organ", 2: "lesion"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = []
        nifti_s, path = _timed(lambda: write_mask_nifti(mask, affine, out / "seg.nii.gz"))
        rows.append(("NIfTI mask (reference)", nifti_s, None, path))
        seg_s, path = _timed(lambda: write_dicom_seg(mask, files, labels, out / "seg.dcm"))
        rows.append(("DICOM SEG", seg_s, None, path))
        rt_s, path = _timed(lambda: write_rtstruct(mask, files, labels, out / "rt.dcm"))
        rows.append(("RTSTRUCT, defaults (20 mm³ clean-up, 2,000 contours)", rt_s, _contours(path), path))
        raw_s, path = _timed(
            lambda: write_rtstruct(mask, files, labels, out / "raw.dcm", min_component_mm3=0, max_contours=None)
        )
        rows.append(("RTSTRUCT, mask as it is", raw_s, _contours(path), path))
        print(f"grid {volume.shape}, {int((mask > 0).sum())} foreground voxels, "
              f"{sum(ndimage.label(mask == k)[1] for k in labels)} 3D components")
        print("| output | seconds | ratio to NIfTI | contours | MB |")
        print("|---|---|---|---|---|")
        for name, seconds, contours, path in rows:
            print(f"| {name} | {seconds:.1f} | {seconds / nifti_s:.1f} | {contours if contours is not None else '-'} | "
                  f"{Path(path).stat().st_size / 1e6:.1f} |")


def _contours(path: Path) -> int:
    ds = pydicom.dcmread(path)
    return sum(len(roi.get("ContourSequence", [])) for roi in ds.ROIContourSequence)


if __name__ == "__main__":
    main()
