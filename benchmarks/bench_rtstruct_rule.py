"""RTSTRUCT fill rules on a real planning CT: structure volumes by the voxel-centre rule (clinseg's default) and
the boundary-inclusive rule (``--contour-rule boundary``, as rt-utils' ``cv2.fillPoly``), same run, same contours.

Prints markdown rows ``| structure | contours | centre (mL) | boundary (mL) | ratio boundary/centre |`` for every
ROI of ``nsclc/LUNG1-001`` (the 134-slice CT it references). The ratio is the effect of the rule alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.outputs.rtstruct_read import rasterise_rois, read_rtstruct
from transforms.dicom.series import series_to_volume
from transforms.dicom.discovery import discover_series, read_header, walk_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patient", type=Path, default=Path(__file__).parents[1] / "../shared/data/nsclc/LUNG1-001")
    args = parser.parse_args()
    structure_set = next(
        p for p in walk_files(args.patient) if (h := read_header(p)) and str(h.header.get("Modality")) == "RTSTRUCT"
    )
    series = next(s for s in discover_series(args.patient) if s.modality == "CT")
    volume, affine, meta = series_to_volume(series)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    names = [n for n, contours in read_rtstruct(structure_set).items() if contours]
    rasters, seconds = {}, {}
    for rule in ("centre", "boundary"):
        start = time.perf_counter()
        rasters[rule] = rasterise_rois(structure_set, meta["dicom_files"], names, rule=rule)
        seconds[rule] = time.perf_counter() - start
    print(f"CT {tuple(volume.shape)}, voxel {voxel_ml * 1000:.3f} mm^3; "
          f"rasterising took {seconds['centre']:.1f} s (centre), {seconds['boundary']:.1f} s (boundary)")
    print("| structure | contours | centre (mL) | boundary (mL) | ratio boundary/centre |")
    print("|---|---|---|---|---|")
    for name in (n for n in names if rasters["centre"][n].contours):  # point ROIs (isocentres) have none
        centre = np.count_nonzero(rasters["centre"][name].mask) * voxel_ml
        boundary = np.count_nonzero(rasters["boundary"][name].mask) * voxel_ml
        print(f"| {name} | {rasters['centre'][name].contours} | {centre:.2f} | {boundary:.2f} | "
              f"{boundary / centre:.3f} |")


if __name__ == "__main__":
    main()
