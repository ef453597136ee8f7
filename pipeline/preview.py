"""Preview PNG of a predicted mask: three orthogonal slices through the largest structure, radiological view.

Volumes are first reoriented to RAS with ``nibabel.orientations`` (nearest axes for oblique grids), so an LPS
and a RAS copy of the same data give the same picture. Display follows the radiological convention: axial
and coronal views show the patient's right on the screen's left; anterior is up in axial views and on the left
in sagittal views; superior is up. Pixel aspect follows the voxel spacing. A 2D input ``(X, Y)`` is shown as
one axial panel by the same rule, so a 2D array without geometry (identity affine, e.g. loaded from a PNG as
``(column, row)``) needs ``affine=diag(-1, -1, 1, 1)`` to appear as stored. Rendering uses matplotlib's Agg
canvas directly (no pyplot, no display, no global backend change).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from monai.data import MetaTensor
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from pipeline.atomic import atomic_write_bytes
from pipeline.writers import as_affine, label_array, spatial_array

__all__ = ["PanelSlice", "label_colour", "orthogonal_slices", "render_preview"]

logger = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.45
MAX_LEGEND = 12
PANEL_INCHES = 4.0

PanelSlice = tuple[str, np.ndarray, np.ndarray, float]
"""(view name, image (rows, cols), mask (rows, cols), aspect = row spacing / column spacing)."""


def label_colour(label: int) -> tuple[float, float, float]:
    """RGB in [0, 1] for a label id (matplotlib ``tab20``, cycling)."""
    return tuple(matplotlib.colormaps["tab20"]((int(label) - 1) % 20)[:3])


def _to_ras(image: np.ndarray, mask: np.ndarray, affine: np.ndarray):
    to_ras = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    new_affine = affine @ inv_ornt_aff(to_ras, image.shape)
    return apply_orientation(image, to_ras), apply_orientation(mask, to_ras), voxel_sizes(new_affine)


def _centre(mask: np.ndarray) -> tuple[int, ...]:
    counts = np.bincount(mask.ravel().astype(np.int64))
    counts[0] = 0
    if not counts.any():
        return tuple(s // 2 for s in mask.shape)
    inside = mask == int(np.argmax(counts))
    centroid = np.asarray(ndimage.center_of_mass(inside))
    points = np.argwhere(inside)  # the structure's voxel nearest its centroid: in view even when not convex
    return tuple(int(v) for v in points[np.argmin(((points - centroid) ** 2).sum(axis=1))])


def orthogonal_slices(image, mask, affine) -> list[PanelSlice]:
    """Radiological-view slices through the centre of the largest structure.

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``.
        mask: integer labels on the same grid.
        affine: 4x4 (3x3 for 2D) voxel->world in mm, RAS; ``None`` takes the MetaTensor mask's (or image's).

    Returns:
        ``[axial, coronal, sagittal]`` for 3D, ``[axial]`` for 2D; each ``(name, image2d, mask2d, aspect)``
        with row 0 at the top of the screen.
    """
    img = spatial_array(image, "image").astype(np.float32)
    lab = label_array(mask)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} must equal mask shape {lab.shape}")
    aff = as_affine(affine, mask if isinstance(mask, MetaTensor) else image)
    flat = img.ndim == 2
    if flat:
        img, lab = img[:, :, None], lab[:, :, None]
    img, lab, (sx, sy, sz) = _to_ras(img, lab.astype(np.int32), aff)
    cx, cy, cz = _centre(lab)
    # RAS arrays: reversed x puts the patient's right on the left, reversed y/z puts anterior/superior on top
    panels = [("axial", img[::-1, ::-1, cz].T, lab[::-1, ::-1, cz].T, sy / sx)]
    if not flat:
        panels.append(("coronal", img[::-1, cy, ::-1].T, lab[::-1, cy, ::-1].T, sz / sx))
        panels.append(("sagittal", img[cx, ::-1, ::-1].T, lab[cx, ::-1, ::-1].T, sz / sy))
    return [(name, np.ascontiguousarray(i), np.ascontiguousarray(m), float(a)) for name, i, m, a in panels]


def _window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        level, width = (float(v) for v in window)
        if not width > 0:
            raise ValueError(f"window must be (level, width) with width > 0, got {window}")
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def render_preview(
    image,
    mask,
    affine,
    labels: Mapping[int, str],
    path: str | os.PathLike,
    *,
    window: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Render the mask over the image as a PNG (written atomically).

    The figure is ``3 * 4 + 2`` by 4 inches for 3D (one 4-inch panel plus the legend for 2D), times ``dpi``:
    1400x400 pixels at the default 100 dpi (600x400 for 2D).

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` (HU for CT).
        mask: integer labels on the same grid.
        affine: 4x4 voxel->world (mm, RAS); ``None`` takes the MetaTensor's.
        labels: label id -> name for the legend (labels in view without a name show as ``label <id>``).
        path: destination ``.png``.
        window: ``(level, width)`` intensity window (e.g. ``(40, 400)`` HU for soft tissue); default the
            0.5-99.5 percentile range of the image.
        dpi: pixels per inch.

    Returns:
        ``path``.
    """
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"preview path must end with .png, got {str(path)!r}")
    panels = orthogonal_slices(image, mask, affine)
    vmin, vmax = _window(np.concatenate([p[1].ravel() for p in panels]), window)
    width = PANEL_INCHES * len(panels) + 2.0
    fig = Figure(figsize=(width, PANEL_INCHES), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    shown: dict[int, int] = {}
    for idx, (name, img2d, mask2d, aspect) in enumerate(panels):
        ax = fig.add_axes((idx * PANEL_INCHES / width, 0.0, PANEL_INCHES / width, 0.92))
        ax.set_facecolor("black")
        ax.imshow(img2d, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")
        overlay = np.zeros((*mask2d.shape, 4), np.float32)
        for lid in np.unique(mask2d[mask2d > 0]):
            inside = mask2d == lid
            overlay[inside] = (*label_colour(int(lid)), OVERLAY_ALPHA)
            shown[int(lid)] = shown.get(int(lid), 0) + int(inside.sum())
        ax.imshow(overlay, aspect=aspect, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, color="white", fontsize=10)
    order = sorted(shown, key=lambda lid: (-shown[lid], lid))
    handles = [
        Patch(color=label_colour(lid), label=str(labels.get(lid, f"label {lid}")))
        for lid in order[:MAX_LEGEND]
    ]
    if len(order) > MAX_LEGEND:
        handles.append(Patch(color="none", label=f"+{len(order) - MAX_LEGEND} more"))
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, labelcolor="white")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    logger.debug("rendered preview %s (%d structures in view)", Path(path).name, len(order))
    return atomic_write_bytes(path, buf.getvalue())
