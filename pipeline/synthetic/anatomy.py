"""Voxel-space anatomy of the synthetic phantoms: a tissue map, then CT (HU) and T1-like MR renderings of it.

Everything is built on the voxel grid from millimetre coordinates centred on the grid, so the anatomy keeps
its physical proportions whatever the spacing, and sizes scale with the field of view so small test grids
still hold a body, an organ and a lesion. The three functions draw from one ``np.random.Generator`` in a fixed
order: :func:`draw_tissues` first, then :func:`render_ct`, then :func:`render_mr`.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

__all__ = ["TISSUES", "draw_tissues", "label_from_tissues", "render_ct", "render_mr"]

logger = logging.getLogger(__name__)

TISSUES = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "organ": 3,
    "lesion": 4,
    "cortical_bone": 5,
    "cancellous_bone": 6,
    "canal": 7,
    "disc": 8,
}
"""Tissue codes of the map returned by :func:`draw_tissues`."""

# (low, high) per tissue; each case draws one value in the range.
_CT_HU = {
    "air": (-1000.0, -1000.0),
    "fat": (-110.0, -90.0),
    "muscle": (40.0, 55.0),
    "organ": (100.0, 120.0),  # portal-venous phase: the enhanced organ stands out from muscle
    "lesion": (35.0, 55.0),  # hypodense lesion, as metastases appear in the venous phase
    "cortical_bone": (700.0, 1000.0),
    "cancellous_bone": (300.0, 400.0),
    "canal": (5.0, 20.0),
    "disc": (70.0, 90.0),
}
# T1-like: fat bright, organ medium, lesion dark, cortical bone and air dark (scanner units).
_MR_SIGNAL = {
    "air": (0.0, 0.0),
    "fat": (1000.0, 1200.0),
    "muscle": (380.0, 450.0),
    "organ": (550.0, 650.0),
    "lesion": (200.0, 300.0),
    "cortical_bone": (30.0, 60.0),
    "cancellous_bone": (250.0, 320.0),
    "canal": (150.0, 200.0),
    "disc": (300.0, 380.0),
}


def _grid(
    shape: tuple[int, ...], spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Broadcastable mm coordinates ``x``, ``y``, ``z`` centred on the grid, and the half z extent (mm).

    For 2D grids ``z`` is a zero array (the phantom's mid-plane) and the half z extent is 1.
    """
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    if len(shape) == 2:
        return axes[0][:, None], axes[1][None, :], np.zeros((1, 1)), 1.0
    half_z = max(shape[2] * spacing[2] / 2.0, 1e-6)
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :], half_z


def _lut(rng: np.random.Generator, ranges: dict[str, tuple[float, float]]) -> np.ndarray:
    """One value per tissue code, drawn in ``TISSUES`` order."""
    lut = np.zeros(len(TISSUES), dtype=np.float64)
    for name, code in TISSUES.items():
        low, high = ranges[name]
        lut[code] = rng.uniform(low, high)
    return lut


def draw_tissues(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Draw one phantom's anatomy as a tissue map.

    Body with an irregular elliptic outline varying along z, a subcutaneous fat ring, muscle, a posterior
    spine (vertebral body with cortical shell, discs in 3D, canal and arch), a smoothly deformed liver-like
    organ on the patient's right (+x in RAS) and 1-3 lesions (unions of spheres/disks) strictly inside it.

    Args:
        rng: the phantom's generator (consumed in a fixed order).
        shape: ``(X, Y)`` or ``(X, Y, Z)`` voxels.
        spacing: voxel size in mm, same length as ``shape``.

    Returns:
        ``uint8`` tissue codes (see ``TISSUES``), shape ``shape``.

    Raises:
        ValueError: the grid is too small to hold an organ with a lesion strictly inside it.
    """
    dims = len(shape)
    x, y, z, half_z = _grid(shape, spacing)
    half_x, half_y = shape[0] * spacing[0] / 2.0, shape[1] * spacing[1] / 2.0
    t = z / half_z  # -1..1 along z (0 in 2D)

    # Body outline: ellipse with low-order angular ripples that twist and breathe along z.
    a = half_x * rng.uniform(0.78, 0.9) * (1.0 + rng.uniform(-0.06, 0.06) * t)
    b = half_y * rng.uniform(0.6, 0.72) * (1.0 + rng.uniform(-0.05, 0.05) * t**2)
    cx, cy = rng.uniform(-0.03, 0.03) * half_x, rng.uniform(-0.03, 0.03) * half_y
    theta = np.arctan2((y - cy) / b, (x - cx) / a)
    ripple = np.ones(np.broadcast_shapes(theta.shape, t.shape))
    for k in (2, 3, 4):
        amplitude, phase, twist = rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi), rng.uniform(-1, 1)
        ripple = ripple + amplitude * np.cos(k * theta + phase + twist * t)
    rho = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) / ripple
    fat_fraction = rng.uniform(0.08, 0.14)
    tissues = np.zeros(shape, dtype=np.uint8)
    tissues[np.broadcast_to(rho <= 1.0, shape)] = TISSUES["fat"]
    interior = np.broadcast_to(rho <= 1.0 - fat_fraction, shape)
    tissues[interior] = TISSUES["muscle"]

    # Spine: vertebral body (cortical shell + cancellous core, discs along z), canal, bony arch behind it.
    b_mid = half_y * 0.66
    rv = b_mid * rng.uniform(0.14, 0.18)
    sx, sy = cx + rng.uniform(-0.05, 0.05) * rv, cy - 0.45 * b_mid
    rc = 0.45 * rv
    ccy = sy - rv - 1.3 * rc
    d_body = np.hypot(x - sx, y - sy)
    d_canal = np.hypot(x - sx, y - ccy)
    period, phase = rng.uniform(22.0, 28.0), rng.uniform(0.0, 28.0)
    disc = ((z - phase) % period < 0.2 * period) if dims == 3 else np.zeros_like(z, dtype=bool)
    arch = (d_canal <= 1.6 * rc) & (d_canal > rc) & (y < sy - rv * 0.5)
    for mask, name in (
        ((d_body <= rv) | arch, "cortical_bone"),
        ((d_body <= 0.78 * rv) & ~disc, "cancellous_bone"),
        ((d_body <= rv) & disc, "disc"),
        (d_canal <= rc, "canal"),
    ):
        tissues[np.broadcast_to(mask, shape) & interior] = TISSUES[name]

    # Organ: rotated, tapered ellipsoid with a smooth angular deformation, in the interior, off the spine.
    ocx = cx + rng.uniform(0.15, 0.3) * a.mean()
    ocy = cy + rng.uniform(0.0, 0.15) * b.mean()
    ocz = rng.uniform(-0.1, 0.1) * half_z if dims == 3 else 0.0
    ox, oy = rng.uniform(0.55, 0.65) * a.mean(), rng.uniform(0.55, 0.65) * b.mean()
    oz = rng.uniform(0.7, 0.85) * half_z
    psi, taper = rng.uniform(-0.4, 0.4), rng.uniform(-0.25, 0.25)
    px, py, pz = x - ocx, y - ocy, z - ocz
    ux = (np.cos(psi) * px + np.sin(psi) * py) / ox
    uy = (-np.sin(psi) * px + np.cos(psi) * py) / oy
    uz = pz / oz if dims == 3 else np.zeros_like(pz)
    scale = 1.0 + taper * uz
    radius = np.sqrt((ux / scale) ** 2 + (uy / scale) ** 2 + uz**2)
    direction = np.stack(np.broadcast_arrays(ux, uy, uz)) / np.maximum(radius, 1e-6)
    limit = np.ones(radius.shape)
    for _ in range(3):
        freq = rng.normal(size=3) * 2.0
        amplitude, phase = rng.uniform(0.03, 0.08), rng.uniform(0, 2 * np.pi)
        limit = limit + amplitude * np.cos(np.tensordot(freq, direction, axes=1) + phase)
    off_spine = (d_body > rv + 3.0) & (d_canal > 1.6 * rc + 3.0) & (y > sy)
    organ_space = np.broadcast_to((rho <= 1.0 - fat_fraction - 0.05) & off_spine, shape)
    organ = np.broadcast_to(radius <= limit, shape) & organ_space
    tissues[organ] = TISSUES["organ"]

    # Lesions: unions of spheres (disks in 2D) clipped to voxels whose face neighbours are all organ.
    depth = ndimage.distance_transform_edt(organ, sampling=spacing)
    margin = float(max(spacing))
    core = depth > margin
    if not core.any():
        raise ValueError(
            f"shape {shape} with spacing {spacing} mm is too small to hold a lesion inside the organ."
        )
    coords = np.stack(np.broadcast_arrays(x, y, z), axis=-1).reshape(-1, 3)
    flat_depth = depth.reshape(-1)
    sizes = (ox, oy, oz) if dims == 3 else (ox, oy)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.18, 0.32) * min(sizes)
        candidates = np.flatnonzero(flat_depth >= min(r + margin, 0.8 * flat_depth.max()))
        centre_index = int(candidates[rng.integers(candidates.size)])
        centre = coords[centre_index]
        r = max(min(r, flat_depth[centre_index] - margin), margin)
        lesion = np.zeros(shape, dtype=bool)
        for part in range(int(rng.integers(2, 5))):
            offset = rng.normal(size=3)
            offset[2] *= dims == 3
            offset *= (0.0 if part == 0 else rng.uniform(0.3, 0.8) * r) / max(np.linalg.norm(offset), 1e-6)
            part_r = r if part == 0 else r * rng.uniform(0.4, 0.8)
            c = centre + offset
            lesion |= np.broadcast_to((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= part_r**2, shape)
        tissues[lesion & core] = TISSUES["lesion"]
    lesion_voxels = int((tissues == TISSUES["lesion"]).sum())
    logger.debug("phantom tissues %s: organ %d voxels, lesion %d voxels", shape, organ.sum(), lesion_voxels)
    return tissues


def label_from_tissues(tissues: np.ndarray) -> np.ndarray:
    """Segmentation label ``uint8`` (0 background, 1 organ, 2 lesion) from a tissue map of the same shape."""
    label = np.zeros(tissues.shape, dtype=np.uint8)
    label[tissues == TISSUES["organ"]] = 1
    label[tissues == TISSUES["lesion"]] = 2
    return label


def _smooth(image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Mild partial-volume blur: Gaussian with sigma 0.4 mm (at most 0.6 voxel) per axis."""
    return ndimage.gaussian_filter(image, sigma=[min(0.4 / s, 0.6) for s in spacing], mode="nearest")


def _unit_coords(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Broadcastable coordinates in -1..1 along each axis of ``shape``."""
    out = []
    for axis, n in enumerate(shape):
        view = [1] * len(shape)
        view[axis] = n
        out.append(np.linspace(-1.0, 1.0, n).reshape(view) if n > 1 else np.zeros(view))
    return out


def render_ct(rng: np.random.Generator, tissues: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """CT image of a tissue map: per-tissue HU, partial-volume blur, smooth body bias, Gaussian noise.

    Args:
        rng: the phantom's generator (after :func:`draw_tissues`).
        tissues: ``(X, Y[, Z])`` tissue codes.
        spacing: voxel size in mm.

    Returns:
        ``int16`` HU in -1024..3071, same shape.
    """
    hu = _smooth(_lut(rng, _CT_HU)[tissues], spacing)
    coords = _unit_coords(tissues.shape)
    gradient = sum(rng.uniform(-15.0, 15.0) * c for c in coords)
    body = _smooth((tissues != TISSUES["air"]).astype(np.float64), spacing)
    hu = hu + gradient * body + rng.normal(0.0, rng.uniform(10.0, 20.0), size=tissues.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def render_mr(rng: np.random.Generator, tissues: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """T1-like MR image of a tissue map: per-tissue signal, multiplicative smooth bias field, Rician noise.

    Args:
        rng: the phantom's generator (after :func:`render_ct`).
        tissues: ``(X, Y[, Z])`` tissue codes.
        spacing: voxel size in mm.

    Returns:
        ``int16`` signal (scanner units, >= 0), same shape.
    """
    signal = _smooth(_lut(rng, _MR_SIGNAL)[tissues], spacing)
    coords = _unit_coords(tissues.shape)
    log_bias = sum(rng.uniform(-0.15, 0.15) * c + rng.uniform(-0.1, 0.1) * c**2 for c in coords)
    sigma = rng.uniform(15.0, 30.0)
    real = signal * np.exp(log_bias) + rng.normal(0.0, sigma, size=tissues.shape)
    imag = rng.normal(0.0, sigma, size=tissues.shape)
    return np.clip(np.rint(np.hypot(real, imag)), 0, np.iinfo(np.int16).max).astype(np.int16)
