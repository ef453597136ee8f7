"""Preview PNG of a predicted mask: three orthogonal slices through the largest structure, radiological view,
and a second row through the smallest structure when the first row misses it (small lesions).

Views are defined on the RAS-reoriented grid (``nibabel.orientations``, nearest axes for oblique grids), so an
LPS and a RAS copy of the same data give the same picture; the volume itself is never copied or reoriented: the
centre is found slab by slab on the original array and only the three slices are cut out and reoriented.
Display follows the radiological convention: axial and coronal views show the patient's right on the screen's
left; anterior is up in axial views and on the left in sagittal views; superior is up. Pixel aspect follows the
voxel spacing. A 2D input ``(X, Y)`` is shown as one axial panel by the same rule, so a 2D array without
geometry (identity affine, e.g. loaded from a PNG as ``(column, row)``) needs ``affine=diag(-1, -1, 1, 1)`` to
appear as stored. Structures are filled and outlined in colours of the Okabe-Ito palette (distinct under the
common colour-vision deficiencies), by rank among the declared labels. Rendering uses matplotlib's Agg canvas
directly (no pyplot, no display, no global backend change).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from monai.data import MetaTensor
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from pipeline.core.atomic import atomic_write_bytes
from pipeline.core.arrays import as_affine, label_array, spatial_array
from pipeline.outputs.preview_window import display_range, slabs

__all__ = [
    "PanelSlice",
    "label_colour",
    "orthogonal_slices",
    "render_preview",
]

logger = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.45
MAX_LEGEND = 12
PANEL_INCHES = 4.0
LEGEND_INCHES = 3.0
TITLE_INCHES = 0.5
FONT_SIZE = 12

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
"""Okabe & Ito's colour-blind-safe palette without its black (invisible on CT)."""
PALETTE = (*OKABE_ITO, "#9467BD", "#8C564B", "#BCBD22", "#17BECF")
"""Okabe-Ito, then the tab10 colours unlike any of them (purple, brown, olive, cyan)."""


class PanelSlice(NamedTuple):
    """One view: ``image`` and ``mask`` ``(rows, cols)`` with row 0 at the top of the screen."""

    name: str
    """``"axial"``, ``"coronal"`` or ``"sagittal"``."""
    image: np.ndarray
    mask: np.ndarray
    aspect: float
    """Row spacing / column spacing."""
    axis: int
    """The axis of the stored array that the view cuts across."""
    index: int
    """The slice's index along ``axis`` (0-based)."""
    size: int
    """The number of slices along ``axis``."""


def label_colour(label: int, labels: Iterable[int] | None = None) -> tuple[float, float, float]:
    """RGB in [0, 1] for a label id from :data:`PALETTE`, cycling.

    Args:
        label: the label id.
        labels: the declared label ids (e.g. a bundle's); when given and ``label`` is among them, the colour
            follows its rank among them, so the first declared structures get the most distinct colours
            whatever their ids; otherwise it follows the id.
    """
    ids = sorted({int(v) for v in labels}) if labels is not None else []
    rank = ids.index(int(label)) if int(label) in ids else int(label) - 1
    return tuple(float(v) for v in matplotlib.colors.to_rgb(PALETTE[rank % len(PALETTE)]))





def _to_ras_index(ornt: np.ndarray, shape: tuple[int, ...], index, axis: int):
    """RAS index (int or array) along RAS axis ``int(ornt[axis, 0])`` of original ``index`` along ``axis``."""
    return index if ornt[axis, 1] == 1 else shape[axis] - 1 - index


def _label_counts(lab: np.ndarray) -> np.ndarray:
    """Voxels per label value of ``lab`` (uint8 or uint16), counted slab by slab; background set to 0."""
    counts = np.zeros(np.iinfo(lab.dtype).max + 1, np.int64)
    for _, _, index in slabs(lab):
        counts += np.bincount(lab[index].ravel(), minlength=counts.size)
    counts[0] = 0
    return counts


def _centre(lab: np.ndarray, ornt: np.ndarray, label: int | None) -> tuple[int, ...]:
    """RAS voxel ``(x, y, z)`` of ``label`` nearest its centroid, computed on the original grid; the grid's
    centre when ``label`` is ``None``.

    Picks the same voxel as reorienting ``lab`` to RAS and taking the first (C order) nearest voxel: the
    centroid comes from exact integer coordinate sums, and distance ties go to the smallest RAS index.

    Args:
        lab: labels ``(X, Y, Z)`` (uint8 or uint16) on the original grid.
        ornt: nibabel orientation transform from the original axes to RAS.
        label: a label present in ``lab``, or ``None``.
    """
    ras_shape = [0, 0, 0]
    for axis, size in enumerate(lab.shape):
        ras_shape[int(ornt[axis, 0])] = size
    if label is None:
        return tuple(s // 2 for s in ras_shape)
    total = 0
    sums = [0] * lab.ndim
    for slab_axis, start, index in slabs(lab):
        inside = lab[index] == label
        total += int(np.count_nonzero(inside))
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
    for slab_axis, start, index in slabs(lab):
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


class _Grid(NamedTuple):
    img: np.ndarray  # (X, Y, Z) intensities, original grid (2D inputs get Z = 1)
    lab: np.ndarray  # (X, Y, Z) uint8/uint16 labels, original grid
    to_ras: np.ndarray  # nibabel orientation transform, original axes -> RAS
    spacing: tuple[float, float, float]  # RAS voxel sizes (mm)
    flat: bool  # 2D input


def _grid(image, mask, affine) -> _Grid:
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
    spacing = tuple(float(v) for v in voxel_sizes(aff @ inv_ornt_aff(to_ras, img.shape)))
    return _Grid(img, lab, to_ras, spacing, flat)


def _panels(grid: _Grid, centre: tuple[int, ...]) -> list[PanelSlice]:
    """The views through RAS voxel ``centre``: ``[axial, coronal, sagittal]`` (``[axial]`` for 2D)."""
    sx, sy, sz = grid.spacing
    views = [("axial", 2, sy / sx)]
    if not grid.flat:
        views += [("coronal", 1, sz / sx), ("sagittal", 0, sz / sy)]
    panels = []
    for name, ras_axis, aspect in views:
        axis = int(np.nonzero(grid.to_ras[:, 0] == ras_axis)[0][0])
        panels.append(
            PanelSlice(
                name,
                np.ascontiguousarray(
                    _ras_plane(grid.img, grid.to_ras, ras_axis, centre[ras_axis]), np.float32
                ),
                np.ascontiguousarray(_ras_plane(grid.lab, grid.to_ras, ras_axis, centre[ras_axis]), np.int32),
                float(aspect),
                axis,
                int(_to_ras_index(grid.to_ras, grid.lab.shape, centre[ras_axis], axis)),
                int(grid.lab.shape[axis]),
            )
        )
    return panels


def orthogonal_slices(image, mask, affine, *, label: int | None = None) -> list[PanelSlice]:
    """Radiological-view slices through the centre of one structure.

    Works on the original arrays without copying them: memory grows by a few slices, not by the volume.

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])``.
        mask: integer labels on the same grid.
        affine: 4x4 (3x3 for 2D) voxel->world in mm, RAS; ``None`` takes the MetaTensor mask's (or image's).
        label: the structure to centre on (its voxel nearest its centroid); default the largest one, and the
            grid's centre for an empty mask.

    Returns:
        ``[axial, coronal, sagittal]`` for 3D, ``[axial]`` for 2D, as :class:`PanelSlice` (image float32,
        mask int32).

    Raises:
        ValueError: shapes differ, the mask is not integer, or ``label`` is not in the mask.
    """
    grid = _grid(image, mask, affine)
    counts = _label_counts(grid.lab)
    if label is None:
        label = int(np.argmax(counts)) if counts.any() else None
    elif not 0 < label < counts.size or not counts[label]:
        raise ValueError(f"label {label} is not in the mask")
    return _panels(grid, _centre(grid.lab, grid.to_ras, label))


def _rows(grid: _Grid) -> list[tuple[int | None, list[PanelSlice]]]:
    """(label centred on, panels) per figure row: through the largest structure, then through the smallest
    one when the first row does not show it."""
    counts = _label_counts(grid.lab)
    present = np.flatnonzero(counts)
    if not present.size:
        return [(None, _panels(grid, _centre(grid.lab, grid.to_ras, None)))]
    largest = int(present[np.argmax(counts[present])])
    rows = [(largest, _panels(grid, _centre(grid.lab, grid.to_ras, largest)))]
    smallest = int(present[np.argmin(counts[present])])
    if not any((p.mask == smallest).any() for p in rows[0][1]):
        rows.append((smallest, _panels(grid, _centre(grid.lab, grid.to_ras, smallest))))
    return rows


def _overlay(mask: np.ndarray, labels: Mapping[int, str]) -> np.ndarray:
    """RGBA ``(rows, cols, 4)``: each structure of ``mask`` filled at :data:`OVERLAY_ALPHA` and its edge
    pixels (a 4-neighbour differs) opaque, in its :func:`label_colour`."""
    padded = np.pad(mask, 1, mode="edge")
    edge = np.zeros(mask.shape, bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]] != mask
    out = np.zeros((*mask.shape, 4), np.float32)
    for lid in np.unique(mask[mask > 0]):
        inside = mask == lid
        out[inside] = (*label_colour(int(lid), labels), OVERLAY_ALPHA)
        out[inside & edge, 3] = 1.0
    return out


def _panel_title(panel: PanelSlice, structure: str | None) -> str:
    where = f"{panel.name} {panel.index + 1}/{panel.size}" if panel.size > 1 else panel.name
    return where if structure is None else f"{where} \u00b7 {structure}"


def render_preview(
    image,
    mask,
    affine,
    labels: Mapping[int, str],
    path: str | os.PathLike,
    *,
    window: tuple[float, float] | None = None,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Render the mask over the image as a PNG (written atomically).

    The first row shows the three views through the largest structure; a second row shows them through the
    smallest structure when the first row misses it. Each panel is titled with its view, its slice (1-based
    position along the stored array's axis, of how many) and the structure it is centred on; the legend
    names the structures in view. The figure is ``3 * 4 + 3`` inches wide (``4 + 3`` for 2D) and
    ``4 * rows + 0.5`` high, times ``dpi``: 1500x450 pixels for one row at the default 100 dpi.

    Args:
        image: intensities ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` (HU for CT).
        mask: integer labels on the same grid.
        affine: 4x4 voxel->world (mm, RAS); ``None`` takes the MetaTensor's.
        labels: label id -> name for the legend (labels in view without a name show as ``label <id>``).
        path: destination ``.png``.
        window: ``(level, width)`` intensity window (e.g. ``(40, 400)`` HU for soft tissue); default
            :func:`~pipeline.outputs.preview_window.percentile_window`, the 0.5-99.5 percentile range of the image's non-zero voxels (MR and other
            non-CT inputs; :func:`~pipeline.outputs.preview_window.preview_window` chooses by modality).
        dpi: pixels per inch.
        title: shown at the top, e.g. the case folder's name (never patient data).

    Returns:
        ``path``.
    """
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"preview path must end with .png, got {str(path)!r}")
    grid = _grid(image, mask, affine)
    vmin, vmax = display_range(grid.img, window)
    rows = _rows(grid)
    n_cols = len(rows[0][1])
    width, height = PANEL_INCHES * n_cols + LEGEND_INCHES, PANEL_INCHES * len(rows) + TITLE_INCHES
    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    if title:
        fig.text(
            0.01, 1 - TITLE_INCHES / 2 / height, title, color="white", fontsize=FONT_SIZE + 2, va="center"
        )
    shown: dict[int, int] = {}
    for r, (centred_on, panels) in enumerate(rows):
        structure = None if centred_on is None else str(labels.get(centred_on, f"label {centred_on}"))
        bottom = (len(rows) - 1 - r) * PANEL_INCHES / height
        for c, panel in enumerate(panels):
            box = (c * PANEL_INCHES / width, bottom, PANEL_INCHES / width, (PANEL_INCHES - 0.4) / height)
            ax = fig.add_axes(box)
            ax.set_facecolor("black")
            ax.imshow(
                panel.image, cmap="gray", vmin=vmin, vmax=vmax, aspect=panel.aspect, interpolation="nearest"
            )
            ax.imshow(_overlay(panel.mask, labels), aspect=panel.aspect, interpolation="nearest")
            for lid, n in zip(*np.unique(panel.mask[panel.mask > 0], return_counts=True)):
                shown[int(lid)] = shown.get(int(lid), 0) + int(n)
            ax.set_axis_off()
            ax.set_title(_panel_title(panel, structure), color="white", fontsize=FONT_SIZE - 1)
    order = sorted(shown, key=lambda lid: (-shown[lid], lid))
    handles = [
        Patch(color=label_colour(lid, labels), label=str(labels.get(lid, f"label {lid}")))
        for lid in order[:MAX_LEGEND]
    ]
    if len(order) > MAX_LEGEND:
        handles.append(Patch(color="none", label=f"+{len(order) - MAX_LEGEND} more"))
    if handles:
        fig.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(n_cols * PANEL_INCHES / width, 0.5),
            fontsize=FONT_SIZE,
            frameon=False,
            labelcolor="white",
        )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    logger.debug("rendered preview %s (%d structures in view)", Path(path).name, len(order))
    return atomic_write_bytes(path, buf.getvalue())
