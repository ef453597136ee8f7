"""Test helpers for written DICOM objects: the dicom3tools validator, a contour-by-contour RTSTRUCT reader."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from skimage.draw import polygon

from pipeline.outputs.rtstruct import read_source_slices


def dciodvfy_errors(path) -> list[str]:
    """The ``Error`` lines ``dciodvfy`` (dicom3tools) prints for ``path``, attribute values redacted (they may
    be patient data); skips the test where dciodvfy is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian/Ubuntu package dicom3tools)")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    assert any(line.strip() for line in lines), f"dciodvfy printed nothing for {path}"  # it names the IOD
    errors = [line for line in lines if line.startswith("Error")]
    return [re.sub(r"<[^>]*>", "<...>", line) if "Value" in line else line for line in errors]


def fill_each_contour(path, source_files) -> dict[str, np.ndarray]:
    """ROI name -> ``(X, Y, Z)`` bool mask: every contour filled on its own (``skimage.draw.polygon``, pixel
    centres inside) and the fills OR-ed, as readers such as rt-utils do (no even-odd rule across contours)."""
    slices = read_source_slices(source_files)
    by_uid = {s.uid: k for k, s in enumerate(slices)}
    rows, cols = slices[0].size
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros((cols, rows, len(slices)), bool)
        for item in roi.get("ContourSequence", []):
            k = by_uid[item.ContourImageSequence[0].ReferencedSOPInstanceUID]
            rc = slices[k].to_pixel(np.asarray(item.ContourData, float).reshape(-1, 3))
            rr, cc = polygon(rc[:, 0], rc[:, 1], shape=(rows, cols))
            mask[cc, rr, k] = True
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.sum(a & b)) / total
