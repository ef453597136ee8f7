"""Deterministic synthetic CT/MR patients (2D and 3D) written as NIfTI and DICOM series with an MSD datalist.

A phantom is an abdomen-like slab: air, body with a subcutaneous fat ring, muscle, a posterior spine, a
large liver-like organ (label 1) and 1-3 hypodense lesions strictly inside it (label 2), rendered as CT (HU)
and as a T1-like MR image of the same anatomy. All randomness of a phantom comes from
``np.random.default_rng(seed)``, so a seed gives bit-identical arrays and NIfTI files. :func:`synthesize`
writes::

    OUT/dataset.json
    OUT/patients/case_000/{ct.nii.gz, mr.nii.gz, label.nii.gz, ct_dicom/}

Example:
    >>> out = synthesize(Path("data/synthetic"), cases=6, seed=0)  # doctest: +SKIP
    >>> make_phantom(0).ct.shape  # (X, Y, Z) HU
    (128, 128, 40)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.atomic import atomic_write_json
from pipeline.synthetic.dicom_series import write_dicom_series
from pipeline.synthetic.anatomy import draw_tissues, label_from_tissues, render_ct, render_mr
from transforms.io.atomic import atomic_folder
from transforms.io.nifti_write import write_nifti

__all__ = ["LABELS", "Phantom", "make_phantom", "synthesize", "write_case"]

logger = logging.getLogger(__name__)

LABELS = {0: "background", 1: "organ", 2: "lesion"}
FORMATS = ("nifti", "dicom")
_DEFAULT_SHAPE = {2: (160, 160), 3: (128, 128, 40)}
_DEFAULT_SPACING = {2: (0.8, 0.8), 3: (0.8, 0.8, 2.5)}
_MIN_SIZE = 16


@dataclass(frozen=True)
class Phantom:
    """One synthetic patient on a single voxel grid.

    Attributes:
        ct: ``int16`` HU, ``(X, Y[, Z])``.
        mr: ``int16`` T1-like MR signal (scanner units), same grid and anatomy, different contrast.
        label: ``uint8`` 0 background, 1 organ, 2 lesion, same grid.
        affine: ``(4, 4)`` float64 voxel -> RAS world (mm), ``det > 0``; 2D phantoms use a z spacing of 1 mm.
    """

    ct: np.ndarray
    mr: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_seed(seed: int) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_dims(spatial_dims: int) -> int:
    if not _is_int(spatial_dims) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    return int(spatial_dims)


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}.")
    return tuple(f for f in FORMATS if f in formats)


def _geometry(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], oblique: bool
) -> np.ndarray:
    """Voxel -> RAS affine: scan centre at a plausible table position, rotated about z and x when oblique."""
    angle_z = np.deg2rad(rng.uniform(10.0, 25.0) * rng.choice((-1.0, 1.0)))
    angle_x = np.deg2rad(rng.uniform(2.0, 6.0) * rng.choice((-1.0, 1.0)))
    centre = np.array([rng.uniform(-20.0, 20.0), rng.uniform(-40.0, 0.0), rng.uniform(-250.0, -50.0)])
    rotation = np.eye(3)
    if oblique:
        cz, sz, cx, sx = np.cos(angle_z), np.sin(angle_z), np.cos(angle_x), np.sin(angle_x)
        rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
        rotation = rot_z @ rot_x
    steps = rotation @ np.diag([*spacing, 1.0][:3])
    size = np.array([*shape, 1][:3], dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = steps
    affine[:3, 3] = centre - steps @ ((size - 1.0) / 2.0)
    return affine


def make_phantom(
    seed: int,
    *,
    spatial_dims: int = 3,
    shape: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
    oblique: bool = False,
) -> Phantom:
    """Build one deterministic phantom; the same arguments give bit-identical arrays.

    The anatomy is drawn in voxel space before the geometry, so ``oblique`` changes only the affine.

    Args:
        seed: non-negative integer, the only source of randomness (``np.random.default_rng(seed)``).
        spatial_dims: 3 for a volume ``(X, Y, Z)``, 2 for a slice ``(X, Y)``.
        shape: voxels per axis; default ``(128, 128, 40)`` (3D) or ``(160, 160)`` (2D). In-plane sizes >= 16.
        spacing: voxel size in mm; default ``(0.8, 0.8, 2.5)`` (3D) or ``(0.8, 0.8)`` (2D).
        oblique: rotate the direction cosines 10-25 degrees about z and 2-6 degrees about x.

    Returns:
        The :class:`Phantom`.

    Raises:
        ValueError: bad seed, spatial_dims, shape or spacing.
    """
    seed = _check_seed(seed)
    dims = _check_dims(spatial_dims)
    shape = tuple(_DEFAULT_SHAPE[dims] if shape is None else shape)
    spacing = tuple(_DEFAULT_SPACING[dims] if spacing is None else spacing)
    if len(shape) != dims or not all(_is_int(n) and n >= 1 for n in shape):
        raise ValueError(f"shape must be {dims} positive integers for spatial_dims={dims}, got {shape!r}.")
    if min(shape[:2]) < _MIN_SIZE:
        raise ValueError(f"shape must be at least {_MIN_SIZE} voxels in X and Y, got {shape!r}.")
    if len(spacing) != dims or not all(_is_number(s) and math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {dims} positive finite numbers (mm), got {spacing!r}.")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)

    rng = np.random.default_rng(seed)
    tissues = draw_tissues(rng, shape, spacing)
    ct = render_ct(rng, tissues, spacing)
    mr = render_mr(rng, tissues, spacing)
    affine = _geometry(rng, shape, spacing, oblique)
    return Phantom(ct=ct, mr=mr, label=label_from_tissues(tissues), affine=affine)


def write_case(
    phantom: Phantom, case_dir: Path, *, formats: Sequence[str] = ("nifti",), uid_seed: str | None = None
) -> dict[str, str]:
    """Write one phantom into ``case_dir``; every file appears atomically (temporary name, then rename).

    ``mr.nii.gz`` and ``label.nii.gz`` (labels are always NIfTI) are always written; the CT is written as
    ``ct.nii.gz`` for ``"nifti"`` and as the DICOM series ``ct_dicom/`` (one file per slice, a 2D phantom as a
    single slice) for ``"dicom"``.

    Args:
        phantom: the arrays and affine to write.
        case_dir: patient folder (created if missing).
        formats: any of ``"nifti"``, ``"dicom"``.
        uid_seed: makes the DICOM UIDs deterministic; random UIDs when ``None``.

    Returns:
        Paths written, relative to ``case_dir``: keys ``ct`` (NIfTI), ``ct_dicom``, ``mr``, ``label``.

    Raises:
        ValueError: bad formats or phantom arrays of different shapes.
    """
    formats = _check_formats(formats)
    if not phantom.ct.shape == phantom.mr.shape == phantom.label.shape:
        raise ValueError(
            f"phantom arrays must share one grid, got ct {phantom.ct.shape}, mr {phantom.mr.shape}, "
            f"label {phantom.label.shape}."
        )
    case_dir = Path(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    images = {"mr": phantom.mr.astype(np.int16), "label": phantom.label.astype(np.uint8)}
    if "nifti" in formats:
        images = {"ct": phantom.ct.astype(np.int16), **images}
    written = {}
    for key, array in images.items():
        write_nifti(array, phantom.affine, case_dir / f"{key}.nii.gz")
        written[key] = f"{key}.nii.gz"
    if "dicom" in formats:
        volume = phantom.ct if phantom.ct.ndim == 3 else phantom.ct[..., None]
        with atomic_folder(case_dir / "ct_dicom") as staging:
            write_dicom_series(
                volume,
                phantom.affine,
                staging,
                modality="CT",
                series_description="clinseg synthetic CT",
                uid_seed=uid_seed,
            )
        written["ct_dicom"] = "ct_dicom"
    return written


def _case_seed(seed: int, index: int) -> int:
    """Phantom seed of case ``index`` in a dataset drawn with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _split_counts(cases: int, splits: tuple[float, float, float]) -> tuple[int, int, int]:
    """Training/validation/test sizes; each non-zero fraction gets at least one case when ``cases >= 3``."""
    n_val, n_test = (round(cases * f) for f in splits[1:])
    if cases >= 3:
        n_val, n_test = (max(n, 1) if f > 0 else n for n, f in zip((n_val, n_test), splits[1:]))
    while n_val + n_test > cases - 1 and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return cases - n_val - n_test, n_val, n_test


def synthesize(
    out: Path,
    *,
    cases: int,
    seed: int = 0,
    spatial_dims: int = 3,
    formats: Sequence[str] = ("nifti",),
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    shape: tuple[int, ...] | None = None,
) -> Path:
    """Write ``cases`` synthetic patients and an MSD-style ``dataset.json`` under ``out``.

    Case ``i`` is ``case_{i:03d}``, its phantom seed comes from ``np.random.SeedSequence([seed, i])``, and
    every third case (``i % 3 == 2``) has an oblique affine. The split is a permutation drawn from ``seed``.

    Args:
        out: output folder (created if missing).
        cases: number of patients, >= 1.
        seed: non-negative dataset seed; the same seed writes the same dataset.
        spatial_dims: 3 (volumes) or 2 (slices).
        formats: CT formats, any of ``"nifti"``, ``"dicom"`` (MR and labels are always NIfTI).
        splits: training/validation/test fractions, non-negative, summing to 1, training > 0.
        shape: grid of every phantom (default: :func:`make_phantom`'s), e.g. ``(48, 48, 16)`` for tests.

    Returns:
        Path of ``out/dataset.json``; its paths are relative to ``out``.

    Raises:
        ValueError: bad cases, seed, spatial_dims, formats or splits.
    """
    if not _is_int(cases) or cases < 1:
        raise ValueError(f"cases must be an integer >= 1, got {cases!r}.")
    seed = _check_seed(seed)
    dims = _check_dims(spatial_dims)
    formats = _check_formats(formats)
    splits = tuple(float(f) for f in splits)
    valid = all(math.isfinite(f) and f >= 0 for f in splits) and math.isclose(sum(splits), 1.0, abs_tol=1e-6)
    if len(splits) != 3 or not valid or splits[0] <= 0:
        raise ValueError(
            f"splits must be 3 non-negative fractions summing to 1 with training > 0, got {splits!r}."
        )

    out = Path(out)
    entries = []
    for index in range(cases):
        case = f"case_{index:03d}"
        phantom = make_phantom(_case_seed(seed, index), spatial_dims=dims, shape=shape, oblique=index % 3 == 2)
        uid_seed = f"clinseg-synthetic/{seed}/{case}"
        written = write_case(phantom, out / "patients" / case, formats=formats, uid_seed=uid_seed)
        paths = {key: f"patients/{case}/{rel}" for key, rel in written.items()}
        image = paths.get("ct", paths.get("ct_dicom"))
        entry = {"case": case, "image": image, "mr": paths["mr"], "label": paths["label"]}
        if "ct_dicom" in paths:
            entry["ct_dicom"] = paths["ct_dicom"]
        entries.append(entry)
        logger.info("synthesized %s (%d/%d) in %s: %s", case, index + 1, cases, out / "patients" / case,
                    ", ".join(written.values()))  # fmt: skip

    n_train, n_val, _ = _split_counts(cases, splits)
    order = np.random.default_rng(seed).permutation(cases)
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    training, validation, test = ([entries[i] for i in sorted(part)] for part in parts)
    dataset = {
        "name": "clinseg-synthetic",
        "description": f"Deterministic synthetic CT/MR phantoms (seed {seed}, {dims}D); research use only.",
        "tensorImageSize": f"{dims}D",
        "modality": {"0": "CT", "1": "MR"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(test),
        "training": training,
        "validation": validation,
        "test": test,
    }
    path = out / "dataset.json"
    atomic_write_json(path, dataset)
    sizes = (len(training), len(validation), len(test))
    logger.info("wrote %s: %d training, %d validation, %d test", path, *sizes)
    return path
