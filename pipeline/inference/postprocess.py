"""Per-label clean-up of predicted masks: drop small islands, keep the largest component, fill holes.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` label components with scikit-image,
which is only a dev dependency here, so both are done with ``scipy.ndimage.label`` + counts; hole filling
reuses MONAI's ``FillHoles`` (scipy-based).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import FillHoles, MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

from pipeline.inference.options import PostprocessOptions
from pipeline.core.arrays import label_array
from pipeline.outputs.volumetry import voxel_volume_ml

__all__ = ["CleanLabelsd", "postprocess_mask"]

logger = logging.getLogger(__name__)


def _per_label(value, present: list[int], name: str, cast) -> dict[int, float]:
    if isinstance(value, Mapping):
        out = {int(k): cast(v) for k, v in value.items()}
    else:
        out = {lid: cast(value) for lid in present}
    bad = {k: v for k, v in out.items() if k <= 0 or v < 0}
    if bad:
        raise ValueError(f"{name} needs positive label ids and sizes >= 0, got {bad}")
    return out


def _components(binary: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    structure = ndimage.generate_binary_structure(binary.ndim, connectivity)
    comp, _ = ndimage.label(binary, structure=structure)
    return comp, np.bincount(comp.ravel())


def postprocess_mask(
    mask,
    *,
    keep_largest: Sequence[int] = (),
    min_size: Mapping[int, int] | int = 0,
    min_size_ml: Mapping[int, float] | float = 0.0,
    affine=None,
    fill_holes: Sequence[int] = (),
    connectivity: int | None = None,
):
    """Clean a label mask per label, in this order: remove small components, keep the largest, fill holes.

    Removed voxels become background (0).

    Args:
        mask: integer labels ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` (numpy, torch or MetaTensor).
        keep_largest: labels of which only the largest connected component is kept (e.g. liver, spleen).
        min_size: components smaller than this many voxels are removed; an int applies to every label
            present, a mapping ``{label: voxels}`` to the labels it names.
        min_size_ml: the same threshold in mL (``voxels * voxel volume``); needs ``affine`` (or a
            MetaTensor mask). Where both are given the larger threshold wins.
        affine: 4x4 voxel->world (mm), or voxel sizes (mm), for ``min_size_ml``; ``None`` takes the
            MetaTensor's affine.
        fill_holes: labels whose enclosed holes (background fully surrounded by that label) are filled,
            with MONAI ``FillHoles``.
        connectivity: neighbourhood hops (1 = faces only, up to the number of spatial dims = full); default
            full connectivity, as MONAI's ``KeepLargestConnectedComponent``.

    Returns:
        The cleaned mask, same type, shape and dtype as ``mask``.
    """
    arr = label_array(mask)
    conn = arr.ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= arr.ndim:
        raise ValueError(f"connectivity must be in 1..{arr.ndim}, got {connectivity}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    sizes = _per_label(min_size, present, "min_size", int)
    sizes_ml = _per_label(min_size_ml, present, "min_size_ml", float)
    if any(v > 0 for v in sizes_ml.values()):
        voxel_ml = voxel_volume_ml(affine, mask)
        for lid, ml in sizes_ml.items():
            sizes[lid] = max(sizes.get(lid, 0), int(np.ceil(ml / voxel_ml)))
    out = np.array(arr, copy=True)

    for lid, threshold in sizes.items():
        if threshold <= 1 or lid not in present:
            continue
        comp, counts = _components(out == lid, conn)
        small = counts < threshold
        small[0] = False
        if small.any():
            out[small[comp]] = 0
            logger.debug("label %d: removed %d components below %d voxels", lid, int(small.sum()), threshold)

    for lid in keep_largest:
        comp, counts = _components(out == lid, conn)
        if len(counts) <= 2:  # background + at most one component
            continue
        counts[0] = 0
        out[(comp > 0) & (comp != int(np.argmax(counts)))] = 0

    if len(fill_holes):
        filled = FillHoles(applied_labels=[int(v) for v in fill_holes], connectivity=conn)(out[None])
        out = np.asarray(filled)[0].astype(arr.dtype)

    channel_first = arr.ndim != np.ndim(mask)
    result = out[None] if channel_first else out
    return convert_to_dst_type(result, dst=mask, dtype=getattr(mask, "dtype", None))[0]


class CleanLabelsd(MapTransform):
    """Dictionary transform over :func:`postprocess_mask`: label maps ``(1, X, Y[, Z])`` (MetaTensor, sizes in mL
    from its affine) cleaned per label; nothing happens when no clean-up is asked for.

    Args:
        keys: the label maps (``pred``).
        settings: ``keep_largest``, ``min_size_ml``, ``fill_holes`` (each optional), as
            :meth:`PostprocessOptions.from_config <pipeline.inference.options.PostprocessOptions.from_config>`;
            e.g. a bundle's ``label_postprocessing``.
    """

    def __init__(self, keys: KeysCollection, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(keys)
        self.options = PostprocessOptions.from_config(settings)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.options.active:
            return d
        for key in self.key_iterator(d):
            d[key] = postprocess_mask(
                d[key],
                keep_largest=self.options.keep_largest,
                min_size_ml=self.options.min_size_ml,
                fill_holes=self.options.fill_holes,
            )
        return d
