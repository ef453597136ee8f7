"""MONAI's ``Spacing``/``Spacingd`` with a target-grid shape that sub-micrometre affine noise cannot change.

MONAI sizes the resampled grid as ``round(extent + 1)`` voxels (``monai.data.utils.compute_shape_offset``), the
extent being the input's corner-to-corner span in output voxels. When that span lies on a half voxel (e.g. 129
voxels of 1 mm resampled to 2 mm: 64.5), noise of a few nanometres decides the rounding: a DICOM series (decimal
header strings) and its NIfTI conversion (float32 sform) then give 65 and 64 voxels, and different masks.
:class:`StableSpacing` snaps spans within ``tolerance`` output voxels of a half voxel onto it and rounds those up
(the grid covers the input's extent; MONAI's own result there depends on float round-off), so both give one shape;
every other shape, the output affine and its offset are MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import Spacing, Spacingd

__all__ = ["GRID_TOLERANCE", "MAX_GRID_VOXELS", "StableSpacing", "StableSpacingd", "stable_grid_shape"]

GRID_TOLERANCE = 1e-3
"""Output voxels: spans this close to a half voxel count as the half (1 um at 1 mm; affine noise is ~1e-5 um)."""

MAX_GRID_VOXELS = 2**30
"""Largest resampled grid accepted (4 GiB as float32): a whole-body CT at 1 mm is ~0.3e9 voxels; beyond this a
header is wrong (e.g. a slice spacing of 1e6 mm), and the allocator's failure would not name the file."""


def stable_grid_shape(
    spatial_shape: Sequence[int],
    in_affine: np.ndarray | torch.Tensor,
    out_affine: np.ndarray | torch.Tensor,
    *,
    scale_extent: bool = False,
    tolerance: float = GRID_TOLERANCE,
) -> tuple[int, ...]:
    """Output grid shape as ``compute_shape_offset`` computes it, except that spans within ``tolerance`` (output
    voxels) of a half voxel are snapped onto it and rounded up.

    Args:
        spatial_shape: input spatial shape ``(X, Y[, Z])``.
        in_affine, out_affine: ``(d+1, d+1)`` (or 4x4) voxel -> world of the input and the output grid.
        scale_extent: MONAI's option (voxel extents rather than voxel centres).
        tolerance: snapping distance in output voxels.
    """
    shape = np.asarray(spatial_shape, dtype=np.float64)
    d = len(shape)
    src = np.asarray(to_affine_nd(d, np.asarray(in_affine, dtype=np.float64)), dtype=np.float64)
    dst = np.asarray(to_affine_nd(d, np.asarray(out_affine, dtype=np.float64)), dtype=np.float64)
    ends = [(-0.5, n - 0.5) if scale_extent else (0.0, n - 1.0) for n in shape]
    corners = np.asarray(np.meshgrid(*ends, indexing="ij")).reshape(d, -1)
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    mapped = np.linalg.solve(dst, src) @ corners
    span = np.ptp(mapped[:-1] / mapped[-1], axis=1)
    half = np.floor(span) + 0.5
    span = np.where(np.abs(span - half) <= tolerance, half, span)
    return tuple(int(n) for n in np.floor((span if scale_extent else span + 1.0) + 0.5))


class StableSpacing(Spacing):
    """``monai.transforms.Spacing`` whose output shape is :func:`stable_grid_shape` (same arguments, plus
    ``tolerance`` in output voxels); an explicit ``output_spatial_shape`` still wins."""

    def __init__(
        self, pixdim: Sequence[float] | float, *args, tolerance: float = GRID_TOLERANCE, **kwargs
    ) -> None:
        super().__init__(pixdim, *args, **kwargs)
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 output voxels, got {tolerance}.")
        self.tolerance = float(tolerance)

    def __call__(self, data_array: torch.Tensor, *args, output_spatial_shape=None, **kwargs) -> torch.Tensor:
        if output_spatial_shape is None and isinstance(data_array, MetaTensor):
            output_spatial_shape = self._stable_shape(data_array, kwargs.get("scale_extent"))
        return super().__call__(data_array, *args, output_spatial_shape=output_spatial_shape, **kwargs)

    def _stable_shape(self, image: MetaTensor, scale_extent: bool | None) -> tuple[int, ...]:
        """MONAI's target affine from a lazy dry run on a storage-sharing view (no resampling), then the shape."""
        view = MetaTensor(image.as_tensor(), meta=dict(image.meta))
        for op in image.pending_operations:
            view.push_pending_operation(op)
        planned = super().__call__(view, scale_extent=scale_extent, lazy=True)
        shape = stable_grid_shape(
            image.peek_pending_shape(),
            image.peek_pending_affine(),
            planned.peek_pending_affine(),
            scale_extent=self.scale_extent if scale_extent is None else scale_extent,
            tolerance=self.tolerance,
        )
        _check_grid_size(image, shape, self.pixdim)
        return shape


def _check_grid_size(image: MetaTensor, shape: Sequence[int], pixdim: Sequence[float]) -> None:
    """Refuse a resampled grid over :data:`MAX_GRID_VOXELS`, naming the file, its spacing and the grid."""
    if int(np.prod(shape, dtype=np.float64)) <= MAX_GRID_VOXELS:
        return
    source = image.meta.get("filename_or_obj", "the image")
    affine = np.asarray(to_affine_nd(len(shape), np.asarray(image.peek_pending_affine(), dtype=np.float64)))
    spacing = np.sqrt((affine[:-1, :-1] ** 2).sum(axis=0))
    raise ValueError(
        f"{source}: header spacing {', '.join(f'{s:.6g}' for s in spacing)} mm over "
        f"{tuple(int(n) for n in image.peek_pending_shape())} voxels would resample to a "
        f"{' x '.join(str(n) for n in shape)} grid at {', '.join(f'{p:g}' for p in pixdim)} mm "
        f"({np.prod(shape, dtype=np.float64):.3g} voxels, limit {MAX_GRID_VOXELS:.3g}): the header's spacing "
        "or affine is wrong"
    )


class StableSpacingd(Spacingd):
    """``monai.transforms.Spacingd`` resampling with :class:`StableSpacing`; a drop-in ``_target_`` for bundles.

    Args:
        tolerance: snapping distance in output voxels (:data:`GRID_TOLERANCE`).
        other arguments: as ``Spacingd``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float] | float,
        diagonal: bool = False,
        recompute_affine: bool = False,
        min_pixdim: Sequence[float] | float | None = None,
        max_pixdim: Sequence[float] | float | None = None,
        lazy: bool = False,
        tolerance: float = GRID_TOLERANCE,
        **kwargs,
    ) -> None:
        geometry = {
            "diagonal": diagonal,
            "recompute_affine": recompute_affine,
            "min_pixdim": min_pixdim,
            "max_pixdim": max_pixdim,
            "lazy": lazy,
        }
        super().__init__(keys, pixdim, **geometry, **kwargs)
        self.spacing_transform = StableSpacing(pixdim, tolerance=tolerance, **geometry)
