"""Resampling between a scan's grid and the network grid, slab by slab: predictions back onto the input grid
(:class:`pipeline.inference.restore.RestoreToInputd`) and large scans onto the network grid
(:class:`transforms.geometry.spacing.StableSpacing`).

MONAI's ``Invertd`` (``Spacing`` inverse) builds one float64 sampling grid for the whole output at once: about
2.5 GB for a 512x512x300 CT, plus a full-resolution float map per class. Here the output is filled a slab of
slices at a time (grid, interpolated values and their reduction, e.g. the argmax, are slab-sized), so the only
full-resolution array is the result itself (uint8 labels: 79 MB for that CT). The geometry is the same as
``Invertd``'s: each output voxel centre is mapped through ``inv(src_affine) @ dst_affine`` and interpolated in
the source's voxel space, with border padding (MONAI ``Spacingd``'s default).

When that map only scales, flips and permutes axes (always the case between an input and its ``Orientationd`` +
``Spacingd`` grid, oblique inputs included, since neither rotates), the interpolation is separable and is done
axis by axis with gathers (cheaper than ``grid_sample``'s per-voxel trilinear on CPU); otherwise ``grid_sample``
is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import to_affine_nd

__all__ = ["argmax_labels", "resample_slabwise", "voxel_map"]

SLAB_VOXELS = 1 << 22
"""Output voxels per slab (4 M: 16 slices of 512x512), which bounds the temporaries."""


def voxel_map(src_affine: torch.Tensor | np.ndarray, dst_affine: torch.Tensor | np.ndarray, spatial_dims: int) -> np.ndarray:
    """``(d+1, d+1)`` float64 map from destination voxel indices to source voxel indices."""
    src = np.asarray(to_affine_nd(spatial_dims, np.asarray(src_affine, dtype=np.float64)), dtype=np.float64)
    dst = np.asarray(to_affine_nd(spatial_dims, np.asarray(dst_affine, dtype=np.float64)), dtype=np.float64)
    return np.linalg.solve(src, dst)


def argmax_labels(values: torch.Tensor) -> torch.Tensor:
    """``(C, ...)`` class scores -> ``(1, ...)`` uint8 labels (ties keep the lower class).

    ``max(dim=0).indices`` rather than ``argmax(dim=0)``: same result, and CPU torch reduces it much faster.
    """
    return values.max(dim=0, keepdim=True).indices.to(torch.uint8)


def _axis_permutation(xform: np.ndarray) -> list[int] | None:
    """Source axis of each destination axis when ``xform`` only scales, flips and permutes axes, else None."""
    d = len(xform) - 1
    linear = np.abs(xform[:d, :d])
    source = [int(np.argmax(linear[:, j])) for j in range(d)]
    if sorted(source) != list(range(d)):
        return None
    off = linear.copy()
    off[source, range(d)] = 0
    return source if off.max() <= 1e-9 * linear.max() else None


def _interpolate_axis(values: torch.Tensor, axis: int, coord: torch.Tensor, mode: str) -> torch.Tensor:
    """Linear (or nearest) interpolation of ``values`` along spatial ``axis`` at source ``coord`` (clamped)."""
    n = values.shape[axis + 1]
    coord = coord.clamp(0, n - 1)
    if mode == "nearest":
        return values.index_select(axis + 1, coord.round().long())
    low = coord.floor().long().clamp_(max=n - 1)
    high = (low + 1).clamp_(max=n - 1)
    shape = [1] * values.ndim
    shape[axis + 1] = -1
    weight = (coord - low).to(values.dtype).view(shape)
    below = values.index_select(axis + 1, low)
    return below.add_(values.index_select(axis + 1, high).sub_(below).mul_(weight))


def _separable_slab(
    source: torch.Tensor, scales: np.ndarray, offsets: np.ndarray, dst_shape: Sequence[int], start: int, stop: int, mode: str
) -> torch.Tensor:
    """``source`` (C, *S), axes already in destination order, onto destination rows [start, stop) of axis 0.

    Axis 0 first (it shrinks the source most, and gathers whole contiguous planes), then the last axis, then
    the middle ones. Same values as ``grid_sample(..., padding_mode="border", align_corners=True)``.
    """
    d = len(dst_shape)
    values = source
    for axis in [0, *range(d - 1, 0, -1)]:
        idx = torch.arange(start, stop) if axis == 0 else torch.arange(dst_shape[axis])
        coord = idx.to(torch.float64) * float(scales[axis]) + float(offsets[axis])
        values = _interpolate_axis(values, axis, coord, mode)
    return values


def _slab_grid(xform: np.ndarray, dst_shape: Sequence[int], start: int, stop: int, src_shape: Sequence[int]) -> torch.Tensor:
    """grid_sample grid ``(1, stop - start, *dst_shape[1:], d)`` of normalised source coordinates (align_corners)."""
    d = len(dst_shape)
    axes = [torch.arange(start, stop, dtype=torch.float64)] + [torch.arange(n, dtype=torch.float64) for n in dst_shape[1:]]
    grid = torch.empty((*(len(a) for a in axes), d), dtype=torch.float32)
    for src_axis in range(d):  # a sum of broadcast 1D terms, normalised to [-1, 1]
        n = src_shape[src_axis]
        coord = torch.full((1,) * d, float(xform[src_axis, d]), dtype=torch.float64)
        for dst_axis, values in enumerate(axes):
            view = [1] * d
            view[dst_axis] = -1
            coord = coord + float(xform[src_axis, dst_axis]) * values.view(view)
        normalised = coord * (2.0 / (n - 1)) - 1.0 if n > 1 else coord * 0.0
        grid[..., d - 1 - src_axis] = normalised.to(torch.float32)  # the last grid component is the last axis
    return grid[None]


def resample_slabwise(
    src: torch.Tensor,
    src_affine: torch.Tensor | np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: torch.Tensor | np.ndarray,
    *,
    mode: str = "bilinear",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    slab_voxels: int = SLAB_VOXELS,
) -> torch.Tensor:
    """Resample ``src`` onto the destination grid, one slab of the first axis at a time.

    Args:
        src: values ``(C, *S)`` on the source grid (float; e.g. class probabilities on the network grid).
        src_affine: source voxel -> world (4x4, or ``(d+1)``-square).
        dst_shape: destination spatial shape ``(X, Y[, Z])``.
        dst_affine: destination voxel -> world.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        reduce: applied to each resampled slab ``(C, x, Y[, Z])`` before it is stored, e.g. :func:`argmax_labels`;
            its output dtype and channel count make the result's.
        slab_voxels: destination voxels per slab (bounds memory; the result does not depend on it).

    Returns:
        ``(C', *dst_shape)`` on CPU: ``reduce``'s output per voxel, or the resampled values.
    """
    d = len(dst_shape)
    if src.ndim != d + 1:
        raise ValueError(f"src must be (C, *spatial) with {d} spatial axes like dst_shape, got shape {tuple(src.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    xform = voxel_map(src_affine, dst_affine, d)
    axes = _axis_permutation(xform)
    source = src.float()
    out = None
    if axes is None:
        for start, stop in _slab_bounds(dst_shape, slab_voxels):
            grid = _slab_grid(xform, dst_shape, start, stop, src.shape[1:]).to(source.device)
            values = F.grid_sample(source[None], grid, mode=mode, padding_mode="border", align_corners=True)[0].cpu()
            values = reduce(values) if reduce is not None else values
            if out is None:
                out = torch.empty((values.shape[0], *dst_shape), dtype=values.dtype)
            out[:, start:stop] = values
        return out
    # source axes in destination order, then the destination axes ordered outermost in the source's memory first
    # (a NIfTI read in Fortran order slabs along its last axis): each slab gathers whole planes, with no copy
    source = source.permute(0, *(a + 1 for a in axes))
    order = sorted(range(d), key=lambda j: -source.stride(j + 1))
    source = source.permute(0, *(j + 1 for j in order)).contiguous()  # a no-op when already so
    shape = [dst_shape[j] for j in order]
    scales = np.array([xform[axes[j], j] for j in order])
    offsets = np.array([xform[axes[j], d] for j in order])
    for start, stop in _slab_bounds(shape, slab_voxels):
        values = _separable_slab(source, scales, offsets, shape, start, stop, mode).cpu()
        values = reduce(values) if reduce is not None else values
        if out is None:
            out = torch.empty((values.shape[0], *dst_shape), dtype=values.dtype)
            ordered = out.permute(0, *(j + 1 for j in order))
        ordered[:, start:stop] = values
    return out


def _slab_bounds(shape: Sequence[int], slab_voxels: int) -> list[tuple[int, int]]:
    """``[start, stop)`` rows of axis 0 of ``shape`` with at most ``slab_voxels`` voxels each (one row at least)."""
    step = max(1, slab_voxels // max(int(np.prod(shape[1:])), 1))
    return [(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]
