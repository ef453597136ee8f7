"""Contrast limited adaptive histogram equalization (CLAHE) in torch, 2D and 3D, on any device.

Follows ``skimage.exposure.equalize_adapthist`` (Zuiderveld, Graphics Gems IV, 1994) step by step, channel by
channel: quantize to 2**14 grey levels over the channel's own range, histograms of ``kernel_size`` tiles over
the image reflect-padded to a multiple of the kernel, clip at ``clip_limit`` x tile size with skimage's
iterative redistribution, tile CDFs as grey-level maps, multilinear blend of the 2**d neighbouring tile maps
for every voxel, then rescale to ``[0, 1]``. The torch path is vectorised: one ``bincount`` for all tile
histograms, all tiles clipped at once, and the blend gathers the neighbouring maps for a chunk of voxels at a
time (no Python loop over tiles or voxels). On CPU the two voxel passes run as numba kernels
(:mod:`transforms.intensity.clahe_numba`) when numba is installed; clipping and the maps stay in torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.utils import look_up_option

import transforms.intensity.clahe_numba as clahe_numba

__all__ = ["clahe", "check_clahe_params", "resolve_kernel_size", "NR_OF_GRAY"]

NR_OF_GRAY = 2**14  # grey levels of the internal quantization (as in skimage)


def resolve_kernel_size(
    kernel_size: int | Sequence[int] | None, spatial_shape: Sequence[int]
) -> tuple[int, ...]:
    """Tile size per spatial dimension: ``None`` gives ``max(size // 8, 1)``, an int is used for every dim."""
    if kernel_size is None:
        return tuple(max(int(s) // 8, 1) for s in spatial_shape)
    ks = (kernel_size,) * len(spatial_shape) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(ks) != len(spatial_shape) or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(
            f"clahe: kernel_size must be None, a positive int or {len(spatial_shape)} positive ints "
            f"(one per spatial dim of {tuple(spatial_shape)}), got {kernel_size!r}."
        )
    return ks


def check_clahe_params(kernel_size: int | Sequence[int] | None, clip_limit: float, nbins: int) -> None:
    """Validate CLAHE parameters that do not depend on the image (raises ``ValueError``)."""
    ks = [kernel_size] if kernel_size is None or isinstance(kernel_size, int) else list(kernel_size)
    valid = [k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1) for k in ks]
    if not ks or not all(valid):
        raise ValueError(
            f"clahe: kernel_size must be None, a positive int or positive ints per dim, got {kernel_size!r}."
        )
    if not clip_limit >= 0:
        raise ValueError(f"clahe: clip_limit must be >= 0 (0 disables clipping), got {clip_limit}.")
    if not (isinstance(nbins, int) and 2 <= nbins <= NR_OF_GRAY):
        raise ValueError(f"clahe: nbins must be an int in [2, {NR_OF_GRAY}], got {nbins!r}.")


def _check_input(x: torch.Tensor, slicewise: bool) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"clahe: x must be a floating point torch.Tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}.")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"clahe: x must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(x.shape)}."
        )
    if slicewise and x.ndim != 4:
        raise ValueError(f"clahe: slicewise=True needs a volume (C, H, W, D), got shape {tuple(x.shape)}.")
    if x.numel() == 0:
        raise ValueError(f"clahe: x is empty, shape {tuple(x.shape)}.")
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"clahe: x must lie in [0, 1], got values in [{lo}, {hi}]; rescale it first.")


def _chunk_rows(n_rows: int, row_size: int, device: torch.device) -> int:
    target = (1 << 18) if device.type == "cpu" else (1 << 25)  # CPU: keep chunk tensors within L2/L3
    return max(1, min(n_rows, target // max(row_size, 1)))


def _uint_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item of ``x`` ``(B, *S)``: offset and range mapping its uint16 values onto ``[0, NR_OF_GRAY - 1]``.

    skimage's uint16 is ``round(x * 65535)``; a constant item is not stretched (skimage clips it to
    ``[0, NR_OF_GRAY - 1]``): offset 0, range ``NR_OF_GRAY - 1``.
    """
    dims = tuple(range(1, x.ndim))
    ulo = torch.round(x.amin(dim=dims) * 65535.0).double()
    span = torch.round(x.amax(dim=dims) * 65535.0).double() - ulo
    umin = torch.where(span > 0, ulo, torch.zeros_like(ulo))
    return umin, torch.where(span > 0, span, torch.full_like(span, NR_OF_GRAY - 1))


def _quantize(x: torch.Tensor, nbins: int) -> torch.Tensor:
    """``(B, *S)`` in [0, 1] -> grey-level bins ``(B, *S)`` (uint8 or int16) as skimage computes them.

    skimage rounds to uint16 in float32, stretches each image's own range to ``[0, NR_OF_GRAY - 1]`` in
    float64 and rounds again; the float64 step is kept so that values on a bin edge fall on the same side.
    """
    b, rows_per_item = x.shape[0], x.shape[1]
    umin, span = _uint_range(x)
    bin_size = 1 + NR_OF_GRAY // nbins
    out = torch.empty(x.shape, dtype=torch.uint8 if nbins <= 256 else torch.int16, device=x.device)
    flat_x, flat_o = x.reshape(b * rows_per_item, -1), out.view(b * rows_per_item, -1)
    step = _chunk_rows(flat_x.shape[0], flat_x.shape[1], x.device)
    rows_b = torch.arange(flat_x.shape[0], device=x.device) // rows_per_item
    for r0 in range(0, flat_x.shape[0], step):
        sl = slice(r0, r0 + step)
        t = torch.round(flat_x[sl] * 65535.0).double()
        t.sub_(umin[rows_b[sl], None]).div_(span[rows_b[sl], None]).mul_(NR_OF_GRAY - 1).round_()
        t.clamp_(0, NR_OF_GRAY - 1).div_(bin_size, rounding_mode="floor")
        flat_o[sl] = t.to(out.dtype)
    return out


def _reflect_index(size: int, length: int, device: torch.device) -> torch.Tensor:
    """Indices ``0..length-1`` into an axis of ``size``, reflected past the end (``np.pad`` reflect)."""
    idx = torch.arange(length, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx % period
    return torch.where(idx >= size, period - idx, idx)


def _tile_histograms(bins: torch.Tensor, ks: tuple[int, ...], nbins: int) -> torch.Tensor:
    """Histograms ``(B * prod(n), nbins)`` of the ``ks`` tiles of the reflect-padded ``bins`` ``(B, *S)``."""
    spatial = bins.shape[1:]
    n = [math.ceil(s / k) for s, k in zip(spatial, ks)]
    for axis, (s, k, m) in enumerate(zip(spatial, ks, n)):
        if m * k != s:
            bins = bins.index_select(axis + 1, _reflect_index(s, m * k, bins.device))
    dev = bins.device
    strides = [math.prod(n[a + 1 :]) for a in range(len(n))]
    rest = torch.zeros((), dtype=torch.long, device=dev)
    for a in range(1, len(n)):
        t = (torch.arange(n[a] * ks[a], device=dev) // ks[a]) * (strides[a] * nbins)
        rest = rest.unsqueeze(-1) + t
    row_tile = (torch.arange(n[0] * ks[0], device=dev) // ks[0]) * (strides[0] * nbins)
    batch = torch.arange(bins.shape[0], device=dev) * (math.prod(n) * nbins)
    rows = (batch[:, None] + row_tile[None, :]).reshape(-1)
    flat = bins.reshape(rows.shape[0], *bins.shape[2:])
    total = bins.shape[0] * math.prod(n) * nbins
    hist = torch.zeros(total, dtype=torch.long, device=dev)
    step = _chunk_rows(rows.shape[0], rest.numel(), dev)
    for r0 in range(0, rows.shape[0], step):
        lo = int(rows[r0])  # rows ascend, so one chunk touches a contiguous range of histogram entries
        idx = rest + (rows[r0 : r0 + step] - lo).view(-1, *([1] * rest.ndim))
        idx += flat[r0 : r0 + step]
        counts = torch.bincount(idx.view(-1))
        hist[lo : lo + counts.shape[0]] += counts
    return hist.view(-1, nbins)


def _clip_histograms(hist: torch.Tensor, clim: int) -> torch.Tensor:
    """Clip every row of ``hist`` ``(N, nbins)`` at ``clim`` and redistribute the excess as skimage does.

    skimage's per-histogram loops run here for all histograms in lockstep, each step only on the rows that
    still have excess, so the work shrinks as histograms finish.
    """
    nb = hist.shape[1]
    excess = (hist - clim).clamp_min_(0).sum(1)
    hist = hist.clamp_max_(clim)
    rows = torch.nonzero(excess >= nb).view(-1)  # rows whose excess gives every bin an increment
    if rows.numel():
        h, ex = hist[rows], excess[rows]
        incr = (ex // nb)[:, None]
        upper = clim - incr
        low = h < upper
        h += low * incr
        ex -= (low.sum(1, keepdim=True) * incr).view(-1)
        mid = (h >= upper) & (h < clim)
        ex += ((h - clim) * mid).sum(1)
        hist[rows], excess[rows] = h.masked_fill_(mid, clim), ex
    # "redistribute remaining excess": sweeps over start indices, stopping per row when its excess is gone
    bins = torch.arange(nb, device=hist.device)
    sweep = torch.nonzero(excess > 0).view(-1)
    while sweep.numel():
        before = excess[sweep]
        cur = sweep
        for index in range(nb):
            h, ex = hist[cur], excess[cur]
            under = h < clim
            step = (under.sum(1) // ex).clamp_min(1)
            pick = under & (bins >= index) & ((bins - index) % step[:, None] == 0)
            ex -= pick.sum(1)
            hist[cur], excess[cur] = h + pick, ex
            cur = cur[ex > 0]
            if cur.numel() == 0:
                break
        after = excess[sweep]
        sweep = sweep[(after > 0) & (after != before)]
    return hist


def _axis_interp(
    size: int, k: int, n: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-voxel neighbouring tile index (lower, upper) and blend weights along one axis."""
    p = torch.arange(size, device=device) + k // 2
    blk, c = p // k, (p % k).float() / k
    return [(blk - 1).clamp(0, n - 1), blk.clamp(0, n - 1)], [1.0 - c, c]


def _blend(bins: torch.Tensor, maps: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Blend the 2**d tile maps ``maps`` ``(B, *n, nbins)`` at every voxel of ``bins`` ``(B, *S)``.

    Returns ``(B, *S)`` float32, each item rescaled to [0, 1] by its own range (skimage's final step).
    """
    b, spatial, dev = bins.shape[0], bins.shape[1:], bins.device
    n, nbins, d = maps.shape[1:-1], maps.shape[-1], len(spatial)
    axes = [_axis_interp(s, k, m, dev) for s, k, m in zip(spatial, ks, n)]
    rest_n = math.prod(n[1:])
    # precompute the blend along axis 0 per row when that table is cheaper than the gathers it saves
    pre = rest_n * nbins < (2 ** (d - 1)) * math.prod(spatial[1:])
    corners = [[(e >> (d - 2 - a)) & 1 for a in range(d - 1)] for e in range(2 ** (d - 1))]
    rest_idx, rest_w = [], []
    for corner in corners:
        idx = torch.zeros((), dtype=torch.long, device=dev)
        w = torch.ones((), device=dev)
        for a, e in enumerate(corner, start=1):
            idx = idx.unsqueeze(-1) * n[a] + axes[a][0][e]
            w = w.unsqueeze(-1) * axes[a][1][e]
        rest_idx.append(idx * nbins)
        rest_w.append(w)
    rows_b = torch.arange(b, device=dev).repeat_interleave(spatial[0])
    rows_x = torch.arange(spatial[0], device=dev).repeat(b)
    row_t = [rows_b * n[0] + axes[0][0][e][rows_x] for e in (0, 1)]
    row_w = [axes[0][1][e][rows_x] for e in (0, 1)]
    flat_maps = maps.reshape(b * n[0], rest_n * nbins)
    flat_bins = bins.reshape(b * spatial[0], *spatial[1:])
    out = torch.empty(flat_bins.shape, device=dev)
    lo = torch.full((flat_bins.shape[0],), float("inf"), device=dev)
    hi = torch.full((flat_bins.shape[0],), float("-inf"), device=dev)
    step = _chunk_rows(flat_bins.shape[0], rest_idx[0].numel(), dev)
    view = (-1,) + (1,) * (d - 1)
    for r0 in range(0, flat_bins.shape[0], step):
        sl = slice(r0, r0 + step)
        rows = flat_bins[sl].long()
        if pre:
            table = torch.lerp(flat_maps[row_t[0][sl]], flat_maps[row_t[1][sl]], row_w[1][sl][:, None])
            rows += (torch.arange(rows.shape[0], device=dev) * (rest_n * nbins)).view(view)
            row_terms = [(rows, None)]
        else:
            table = flat_maps
            row_terms = [
                (rows + (row_t[e][sl] * (rest_n * nbins)).view(view), row_w[e][sl].view(view)) for e in (0, 1)
            ]
        acc = torch.zeros(rows.shape, device=dev)
        for base, wrow in row_terms:
            part = acc if wrow is None else torch.zeros(rows.shape, device=dev)
            for ridx, rw in zip(rest_idx, rest_w):
                part.addcmul_(table.take(base + ridx), rw)
            if wrow is not None:
                acc.addcmul_(part, wrow)
        acc = acc.floor_().view(acc.shape[0], -1)
        out[sl] = acc.view(out[sl].shape)
        lo[sl], hi[sl] = torch.aminmax(acc, dim=1)
    # rescale every item to [0, 1] by its own range (skimage's final rescale_intensity)
    lo, hi = lo.view(b, -1).amin(1), hi.view(b, -1).amax(1)
    flat = hi > lo
    shift = torch.where(flat, lo, torch.zeros_like(lo)).view((b,) + (1,) * d)
    inv = torch.where(flat, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(lo)).view((b,) + (1,) * d)
    return out.view(bins.shape).sub_(shift).mul_(inv).clamp_(0.0, 1.0)


def _use_numba(x: torch.Tensor, backend: str) -> bool:
    """``auto``: the numba kernels for CPU tensors when numba is installed, else torch."""
    backend = look_up_option(backend, ("auto", "torch", "numba"))
    if backend == "numba" and (x.device.type != "cpu" or not clahe_numba.available()):
        raise ValueError(
            f"clahe: backend='numba' needs numba installed and a CPU tensor, got a tensor on {x.device} "
            f"(numba available: {clahe_numba.available()}); use backend='auto' or 'torch'."
        )
    return backend == "numba" or (backend == "auto" and x.device.type == "cpu" and clahe_numba.available())


def _clahe_batched(
    x: torch.Tensor, ks: tuple[int, ...], clip_limit: float, nbins: int, numba_path: bool
) -> torch.Tensor:
    """CLAHE of each item of ``x`` ``(B, *S)`` in [0, 1] with tiles ``ks``; returns ``(B, *S)`` in [0, 1]."""
    n = [math.ceil(s / k) for s, k in zip(x.shape[1:], ks)]
    tile_voxels = math.prod(ks)
    clim = int(max(clip_limit * tile_voxels, 1)) if clip_limit > 0 else tile_voxels
    if numba_path:  # the kernels are 3D; a 2D image is a volume with one slice and tiles of depth 1
        x3, ks3 = (x, ks) if x.ndim == 4 else (x[..., None], (*ks, 1))
        out = clahe_numba.clahe_volumes(x3.detach().contiguous().numpy(), ks3, clim, nbins)
        return torch.from_numpy(out).view(x.shape)
    bins = _quantize(x, nbins)
    hist = _clip_histograms(_tile_histograms(bins, ks, nbins), clim)
    maps = (hist.cumsum(1) * (NR_OF_GRAY - 1) // tile_voxels).clamp_max(NR_OF_GRAY - 1).to(torch.float32)
    return _blend(bins, maps.view(x.shape[0], *n, nbins), ks)


def clahe(
    x: torch.Tensor,
    kernel_size: int | Sequence[int] | None = None,
    clip_limit: float = 0.01,
    nbins: int = 256,
    slicewise: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """CLAHE of a channel-first image in [0, 1], channel by channel, as skimage's ``equalize_adapthist``.

    Args:
        x: ``(C, H, W)`` or ``(C, H, W, D)`` float tensor with values in [0, 1], on any device.
        kernel_size: tile shape in voxels per spatial dim (``(H, W)`` when ``slicewise``); ``None`` gives
            1/8 of each dimension.
        clip_limit: normalized clip limit in [0, 1]; higher gives more contrast, 0 disables clipping.
        nbins: number of histogram bins.
        slicewise: for ``(C, H, W, D)``, run 2D CLAHE on every slice along the last axis (batched) instead of
            3D CLAHE with box tiles.
        backend: ``"auto"`` (numba kernels for CPU tensors when numba is installed, torch otherwise),
            ``"torch"`` (pure torch, any device) or ``"numba"``.

    Returns:
        float32 tensor of the shape of ``x`` with values in [0, 1], on the device of ``x``; each channel (each
        slice when ``slicewise``) is rescaled to its own [0, 1] as skimage does.
    """
    check_clahe_params(kernel_size, clip_limit, nbins)
    _check_input(x, slicewise)
    numba_path = _use_numba(x, backend)
    x = x.float()
    if slicewise:
        c, h, w, depth = x.shape
        ks = resolve_kernel_size(kernel_size, (h, w))
        slices = x.permute(0, 3, 1, 2).reshape(c * depth, h, w)
        out = _clahe_batched(slices, ks, clip_limit, nbins, numba_path)
        return out.view(c, depth, h, w).permute(0, 2, 3, 1).contiguous()
    ks = resolve_kernel_size(kernel_size, x.shape[1:])
    return _clahe_batched(x, ks, clip_limit, nbins, numba_path)
