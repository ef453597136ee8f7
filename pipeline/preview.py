"""Preview PNG of a predicted mask: three orthogonal slices through the largest structure, radiological view.

Views are defined on the RAS-reoriented grid (``nibabel.orientations``, nearest axes for oblique grids), so an
LPS and a RAS copy of the same data give the same picture; the volume itself is never copied or reoriented: the
centre is found slab by slab on the original array and only the three slices are cut out and reoriented.
Display follows the radiological convention: axial and coronal views show the patient's right on the screen's
left; anterior is up in axial views and on the left in sagittal views; superior is up. Pixel aspect follows the
voxel spacing. A 2D input ``(X, Y)`` is shown as one axial panel by the same rule, so a 2D array without
geometry (identity affine, e.g. loaded from a PNG as ``(column, row)``) needs ``affine=diag(-1, -1, 1, 1)`` to
appear as stored. Rendering uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend
change).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from monai.data import MetaTensor
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

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


SLAB_VOXELS = 1 << 20
"""Voxels per slab when scanning a mask (4 slices of 512x512): temporaries stay near 20 MB."""


def _slabs(arr: np.ndarray) -> Iterator[tuple[int, int, tuple[slice, ...]]]:
    """Yield ``(axis, start, index)`` slabs of ``arr`` along its slowest-varying (largest stride) axis."""
    axis = int(np.argmax(np.abs(arr.strides)))
    step = max(1, SLAB_VOXELS // max(1, arr.size // max(1, arr.shape[axis])))
    for start in range(0, arr.shape[axis], step):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, start + step)
        yield axis, start, tuple(index)


def _to_ras_index(ornt: np.ndarray, shape: tuple[int, ...], index, axis: int):
    """RAS index (int or array) along RAS axis ``int(ornt[axis, 0])`` of original ``index`` along ``axis``."""
    return index if ornt[axis, 1] == 1 else shape[axis] - 1 - index


def _centre(lab: np.ndarray, ornt: np.ndarray) -> tuple[int, ...]:
    """RAS voxel ``(x, y, z)`` of the largest label nearest its centroid, computed on the original grid.

    Picks the same voxel as reorienting ``lab`` to RAS and taking the first (C order) nearest voxel: the
    centroid comes from exact integer coordinate sums, and distance ties go to the smallest RAS index.

    Args:
        lab: labels ``(X, Y, Z)`` (uint8 or uint16) on the original grid.
        ornt: nibabel orientation transform from the original axes to RAS.
    """
    counts = np.zeros(np.iinfo(lab.dtype).max + 1, np.int64)
    for _, _, index in _slabs(lab):
        counts += np.bincount(lab[index].ravel(), minlength=counts.size)
    counts[0] = 0
    ras_shape = [0, 0, 0]
    for axis, size in enumerate(lab.shape):
        ras_shape[int(ornt[axis, 0])] = size
    if not counts.any():
        return tuple(s // 2 for s in ras_shape)
    label = int(np.argmax(counts))
    total = int(counts[label])
    sums = [0] * lab.ndim
    for slab_axis, start, index in _slabs(lab):
        inside = lab[index] == label
        for axis in range(lab.ndim):
            others = tuple(a for a in range(lab.ndim) if a != axis)
            offset = start if axis == slab_axis else 0
            per_index = inside.sum(axis=others, dtype=np.int64)
            sums[axis] += int(per_index @ np.arange(offset, offset + per_index.size, dtype=np.int64))
    centroid = np.zeros(3)
    for axis, size in enumerate(lab.shape):
        ras_sum = sums[axis] if ornt[axis, 1] == 1 else total * (size - 1) - sums[axis]
        centroid[int(ornt[axis, 0])] = ras_sum / total
    best: tuple[float, tuple[int, ...]] | None = None
    for slab_axis, start, index in _slabs(lab):
        found = np.nonzero(lab[index] == label)
        if not found[0].size:
            continue
        points = np.empty((found[0].size, 3), np.int64)  # RAS indices, as np.argwhere on the RAS array
        for axis, idx in enumerate(found):
            idx = idx + start if axis == slab_axis else idx
            points[:, int(ornt[axis, 0])] = _to_ras_index(ornt, lab.shape, idx, axis)
        dist = ((points - centroid) ** 2).sum(axis=1)
        nearest = float(dist.min())
        voxel = min(tuple(int(v) for v in p) for p in points[dist == nearest])
        if best is None or nearest < best[0] or (nearest == best[0] and voxel < best[1]):
            best = (nearest, voxel)
    return best[1]


def _ras_plane(arr: np.ndarray, ornt: np.ndarray, ras_axis: int, ras_index: int) -> np.ndarray:
    """The RAS plane at ``ras_index`` across ``ras_axis``, shown with row 0 at the top: ``(rows, cols)``.

    Only that plane is read from ``arr`` (original grid): a thickness-1 view is reoriented to RAS.
    """
    axis = int(np.nonzero(ornt[:, 0] == ras_axis)[0][0])
    index = _to_ras_index(ornt, arr.shape, ras_index, axis)
    view = arr[tuple(slice(index, index + 1) if a == axis else slice(None) for a in range(arr.ndim))]
    plane = np.take(apply_orientation(view, ornt), 0, axis=ras_axis)
    # RAS planes: reversed x puts the patient's right on the left, reversed y/z puts anterior/superior on top
    return plane[::-1, ::-1].T


def orthogonal_slices(image, mask, affine) -> list[PanelSlice]:
    """Radiological-view slices through the centre of the largest structure.

    Works on the original arrays without copying them: memory grows by a few slices, not by the volume.

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``.
        mask: integer labels on the same grid.
        affine: 4x4 (3x3 for 2D) voxel->world in mm, RAS; ``None`` takes the MetaTensor mask's (or image's).

    Returns:
        ``[axial, coronal, sagittal]`` for 3D, ``[axial]`` for 2D; each ``(name, image2d, mask2d, aspect)``
        with row 0 at the top of the screen, image float32 and mask int32.
    """
    img = spatial_array(image, "image")
    lab = spatial_array(mask)
    if lab.dtype not in (np.uint8, np.uint16):  # unsigned labels are valid as they are; label_array copies
        lab = label_array(mask)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} must equal mask shape {lab.shape}")
    aff = as_affine(affine, mask if isinstance(mask, MetaTensor) else image)
    flat = img.ndim == 2
    if flat:
        img, lab = img[:, :, None], lab[:, :, None]
    to_ras = ornt_transform(io_orientation(aff), axcodes2ornt(("R", "A", "S")))
    sx, sy, sz = voxel_sizes(aff @ inv_ornt_aff(to_ras, img.shape))
    centre = _centre(lab, to_ras)
    views = [("axial", 2, sy / sx)]
    if not flat:
        views += [("coronal", 1, sz / sx), ("sagittal", 0, sz / sy)]
    return [
        (
            name,
            np.ascontiguousarray(_ras_plane(img, to_ras, ras_axis, centre[ras_axis]), dtype=np.float32),
            np.ascontiguousarray(_ras_plane(lab, to_ras, ras_axis, centre[ras_axis]), dtype=np.int32),
            float(aspect),
        )
        for name, ras_axis, aspect in views
    ]


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
