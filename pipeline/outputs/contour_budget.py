"""Keeping a structure set that planning systems can take: tiny components cleaned up, contours per ROI capped.

A noisy prediction (a barely trained model) holds hundreds of thousands of specks; each is a contour of its own,
which makes an RTSTRUCT of a hundred megabytes that takes minutes to write and that a treatment-planning
system refuses or chokes on. Before tracing, per label:

1. **Clean-up** (``min_component_mm3``, default :data:`MIN_COMPONENT_MM3`): 3D components (26-connected) of the
   label smaller than that volume are removed, and holes (background components, 6-connected, enclosed by the
   label) smaller than that are filled with it. Removed specks of one label inside another become holes there
   and are filled with the surrounding label.
2. **Budget** (``max_contours``, default :data:`MAX_CONTOURS`): when the label still has more slice components
   (one contour each) than the budget, only the largest ones are kept.

Both log a warning naming the ROI, what was dropped and its volume (mL), so the structure set is known to differ
from the label map.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

__all__ = ["MAX_CONTOURS", "MIN_COMPONENT_MM3", "clean_labels", "limit_contours"]

logger = logging.getLogger(__name__)

MIN_COMPONENT_MM3 = 20.0  # about 7 voxels of a 0.98 x 0.98 x 3 mm planning CT; a 2.7 mm cube
MAX_CONTOURS = 2000  # per ROI; a 134-slice planning CT's lungs or body take about 100 to 300


def clean_labels(arr: np.ndarray, names: dict[int, str], min_voxels: int) -> None:
    """Clean-up of the module docstring on ``arr`` ``(X, Y, Z)``, in place: every label of ``names`` (id -> ROI
    name) loses its 3D components under ``min_voxels`` first, then every label fills its enclosed background
    holes under ``min_voxels``. Warns per ROI that changed."""
    if min_voxels <= 1:
        return
    removed = {lid: _remove_small(arr, lid, min_voxels) for lid in names}
    for lid, name in names.items():
        filled = _fill_small_holes(arr, lid, min_voxels)
        if removed[lid][0] or filled:
            logger.warning(
                "ROI %r: clean-up removed %d components (%d voxels) and filled %d voxels of holes, each under %d "
                "voxels", name, *removed[lid], filled, min_voxels,
            )  # fmt: skip
        else:
            logger.debug("ROI %r: no component or hole under %d voxels", name, min_voxels)


def _box(arr: np.ndarray, lid: int) -> tuple[slice, ...] | None:
    found = ndimage.find_objects((arr == lid).astype(np.uint8))
    return found[0] if found else None


def _remove_small(arr: np.ndarray, lid: int, min_voxels: int) -> tuple[int, int]:
    """Set label ``lid``'s 26-connected components under ``min_voxels`` to 0; ``(components, voxels)`` removed."""
    box = _box(arr, lid)
    if box is None:
        return 0, 0
    view = arr[box]
    comp, _ = ndimage.label(view == lid, structure=np.ones((3, 3, 3), bool))
    counts = np.bincount(comp.ravel())
    small = counts < min_voxels
    small[0] = False
    view[small[comp]] = 0
    return int(small.sum()), int(counts[small].sum())


def _fill_small_holes(arr: np.ndarray, lid: int, min_voxels: int) -> int:
    """Give label ``lid`` the 0 voxels of its enclosed background holes (6-connected components of everything
    else inside its bounding box, not touching the box) under ``min_voxels``; the voxels filled."""
    box = _box(arr, lid)
    if box is None:
        return 0
    view = arr[box]
    holes, _ = ndimage.label(view != lid)
    fill = np.bincount(holes.ravel()) < min_voxels
    fill[0] = False
    fill[np.unique(np.concatenate([holes[f].ravel() for f in _faces(holes.ndim)]))] = False
    fill_mask = fill[holes] & (view == 0)
    view[fill_mask] = lid
    return int(fill_mask.sum())


def _faces(ndim: int) -> list[tuple[slice | int, ...]]:
    """Index tuples of the first and last plane along each axis."""
    out: list[tuple[slice | int, ...]] = []
    for axis in range(ndim):
        for end in (0, -1):
            out.append(tuple(end if a == axis else slice(None) for a in range(ndim)))
    return out


def limit_contours(binary: np.ndarray, max_contours: int | None, name: str, voxel_ml: float) -> np.ndarray:
    """``binary`` ``(X, Y, Z)`` with only its ``max_contours`` largest slice components (4-connected, as the
    contours are traced) kept; the mask itself when within budget (``None``: no budget). Warns when it cuts."""
    comps = [ndimage.label(binary[:, :, k]) for k in range(binary.shape[2])]
    total = sum(n for _, n in comps)
    if max_contours is None or total <= max_contours:
        return binary
    sizes = [np.bincount(c.ravel())[1:] for c, _ in comps]
    flat = np.concatenate(sizes)
    cut = np.sort(flat)[::-1][max_contours - 1]  # the smallest size kept
    keep_ties = max_contours - int(np.sum(flat > cut))
    out = np.zeros_like(binary)
    dropped = 0
    for k, ((c, _), s) in enumerate(zip(comps, sizes)):
        keep = s > cut
        ties = np.flatnonzero(s == cut)[: max(keep_ties, 0)]
        keep[ties] = True
        keep_ties -= len(ties)
        out[:, :, k] = np.concatenate([[False], keep])[c]
        dropped += int(s[~keep].sum())
    logger.warning(
        "ROI %r: %d contours over the budget of %d per structure; kept the %d largest, dropped %d voxels (%.2f mL)",
        name, total, max_contours, max_contours, dropped, dropped * voxel_ml,
    )  # fmt: skip
    return out
