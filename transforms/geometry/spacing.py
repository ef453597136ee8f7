"""MONAI's ``Spacing``/``Spacingd`` with a target-grid shape that sub-micrometre affine noise cannot change.

MONAI sizes the resampled grid as ``round(extent + 1)`` voxels (``monai.data.utils.compute_shape_offset``), the
extent being the input's corner-to-corner span in output voxels. When that span lies on a half voxel (e.g. 129
voxels of 1 mm resampled to 2 mm: 64.5), noise of a few nanometres decides the rounding: a DICOM series (decimal
header strings) and its NIfTI conversion (float32 sform) then give 65 and 64 voxels, and different masks.
:class:`StableSpacing` snaps spans within ``tolerance`` output voxels of a half voxel onto it and rounds those up
(the grid covers the input's extent; MONAI's own result there depends on float round-off), so both give one shape;
every other shape, the output affine and its offset are MONAI's.

A large scan (over :data:`SLAB_MIN_VOXELS`, e.g. a 512x512x300 CT) is resampled slab by slab
(:func:`transforms.geometry.slab_resample.resample_slabwise`, same geometry and border padding as MONAI's
``grid_sample``) instead of through MONAI's whole-volume sampling grid, which costs about 480 MB more for that CT;
the MetaTensor records the same operation as MONAI's, so ``Invertd`` still inverts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import Spacing, Spacingd
from monai.utils import GridSamplePadMode

from transforms.geometry.slab_resample import resample_slabwise

__all__ = [
    "GRID_TOLERANCE", "MAX_GRID_VOXELS", "SLAB_MIN_VOXELS", "StableSpacing", "StableSpacingd", "stable_grid_shape"
]

GRID_TOLERANCE = 1e-3
"""Output voxels: spans this close to a half voxel count as the half (1 um at 1 mm; affine noise is ~1e-5 um)."""

MAX_GRID_VOXELS = 2**30
"""Largest resampled grid accepted (4 GiB as float32): a whole-body CT at 1 mm is ~0.3e9 voxels; beyond this a
header is wrong (e.g. a slice spacing of 1e6 mm), and the allocator's failure would not name the file."""

SLAB_MIN_VOXELS = 1 << 24
"""Input voxels from which the resampling goes slab by slab (16.8 M: a 512x512x64 CT)."""


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
        if self._slabwise(data_array, args, kwargs):
            return self._resample_slabwise(data_array, output_spatial_shape, kwargs)
        return super().__call__(data_array, *args, output_spatial_shape=output_spatial_shape, **kwargs)

    def _slabwise(self, image: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        """Whether this call goes slab by slab: a large CPU MetaTensor with nothing pending, resampled eagerly in
        float32 by linear or nearest interpolation with border padding and MONAI's voxel-centre geometry."""
        if args or not isinstance(image, MetaTensor) or image.pending_operations or image.device.type != "cpu":
            return False
        lazy = kwargs.get("lazy")
        dtype = kwargs.get("dtype") or self.sp_resample.dtype
        return (
            image.numel() >= SLAB_MIN_VOXELS
            and not (self.lazy if lazy is None else lazy)
            and str(kwargs.get("mode") or self.sp_resample.mode) in ("bilinear", "nearest")
            and str(kwargs.get("padding_mode") or self.sp_resample.padding_mode) == GridSamplePadMode.BORDER
            and not (kwargs.get("align_corners") or self.sp_resample.align_corners)
            and not (kwargs.get("scale_extent") or self.scale_extent)
            and dtype in (torch.float32, np.float32, "float32")
        )

    def _resample_slabwise(self, image: MetaTensor, shape: Sequence[int], kwargs: dict) -> MetaTensor:
        """MONAI's lazy plan (target affine and the operation it records), carried out by
        :func:`resample_slabwise`."""
        view = MetaTensor(image.as_tensor(), meta=dict(image.meta))
        view.applied_operations = list(image.applied_operations)
        planned = super().__call__(view, output_spatial_shape=shape, **{**kwargs, "lazy": True})
        operation = planned.pending_operations[-1]
        dst_affine = planned.peek_pending_affine()
        mode = str(kwargs.get("mode") or self.sp_resample.mode)
        values = resample_slabwise(image.as_tensor(), image.affine, shape, dst_affine, mode=mode, slab_voxels=1 << 20)
        out = MetaTensor(values, meta=dict(planned.meta))
        out.affine = torch.as_tensor(dst_affine, dtype=torch.float64)
        out.applied_operations = [*image.applied_operations, operation]
        return out

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
