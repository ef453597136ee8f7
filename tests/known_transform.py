"""A known rigid + affine transform applied to a real MR, and the errors of a registration that undoes it: shared by
``tests/test_registration.py`` and ``benchmarks/bench_registration.py`` so the test and the benchmark measure the same
case."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROTATION_DEG = (5.0, -3.0, 4.0)
SCALE_SHEAR = np.array([[1.03, 0.02, 0.0], [0.0, 0.97, 0.01], [0.0, 0.0, 1.02]])
TRANSLATION_MM = (6.0, -4.0, 3.0)


@dataclass(frozen=True)
class KnownAffineCase:
    """``moving`` is ``fixed`` moved by ``truth`` (matrix ``matrix`` about the image centre); ``brain`` are LPS points
    (mm) of ``fixed``'s voxels above its background, where errors are measured."""

    fixed: sitk.Image
    moving: sitk.Image
    truth: sitk.AffineTransform
    matrix: np.ndarray
    brain: np.ndarray


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z by ``degrees``."""
    a, b, c = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _polar_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    return u @ vt


def rotation_error_deg(found: np.ndarray, truth: np.ndarray) -> float:
    """Angle of the rotation between the rotation parts (polar decomposition) of two 3x3 matrices."""
    relative = _polar_rotation(found) @ _polar_rotation(truth).T
    return float(np.rad2deg(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))


def max_error_mm(transform: sitk.Transform, truth, points: np.ndarray) -> float:
    """Largest distance between where ``transform`` and ``truth`` (a transform or a callable) send LPS points."""
    send = truth.TransformPoint if isinstance(truth, sitk.Transform) else truth
    return max(
        float(np.linalg.norm(np.subtract(transform.TransformPoint(p.tolist()), send(p)))) for p in points
    )


def voxel_points(image: sitk.Image, mask: np.ndarray, step: int = 37) -> np.ndarray:
    """LPS points (mm) of every ``step``-th voxel of ``mask`` (``(Z, Y, X)``, SimpleITK's array order)."""
    index = np.argwhere(mask)[::step][:, ::-1]
    return np.array([image.TransformIndexToPhysicalPoint([int(i) for i in v]) for v in index])


def known_affine_case(source: Path, spacing: float) -> KnownAffineCase:
    """``source`` smoothed and resampled to isotropic ``spacing`` mm (the fixed image), and its copy moved by the
    known transform: rotations 5 / -3 / 4 degrees, translation 6 / -4 / 3 mm, scaling with a small shear."""
    original = sitk.ReadImage(str(source), sitk.sitkFloat32)
    size = [round(n * s / spacing) for n, s in zip(original.GetSize(), original.GetSpacing())]
    fixed = sitk.Resample(
        sitk.SmoothingRecursiveGaussian(original, spacing / 2), size, sitk.Transform(), sitk.sitkLinear,
        original.GetOrigin(), [spacing] * 3, original.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip
    background = float(sitk.GetArrayViewFromImage(fixed).min())
    matrix = rotation(ROTATION_DEG) @ SCALE_SHEAR
    truth = sitk.AffineTransform(3)
    truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    truth.SetMatrix(matrix.ravel().tolist())
    truth.SetTranslation(list(TRANSLATION_MM))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, background)
    brain = voxel_points(fixed, sitk.GetArrayViewFromImage(fixed) > background + 0.5)
    return KnownAffineCase(fixed, moving, truth, matrix, brain)
