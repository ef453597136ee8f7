"""Optional CPU fast path for :mod:`transforms.intensity.clahe`: the whole algorithm as single-threaded numba kernels.

The torch path in :mod:`transforms.intensity.clahe` serves every other device (and CPU where numba is missing). Here
each stage is one compiled loop: quantize + tile histograms, skimage's clip-and-redistribute + maps (a direct
port of ``clip_histogram``/``map_histogram``), and the blend of the 8 neighbouring tile maps. There are no
temporaries and no torch ops, so the path does not wait on torch's thread pool, which on a loaded machine
stalls at every parallel op. numba is imported on first use only.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

__all__ = ["available", "clahe_volumes"]

_GREY_MAX = 2**14 - 1  # NR_OF_GRAY - 1 of transforms.intensity.clahe


def available() -> bool:
    """True when numba can be imported."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _kernels():
    import numba

    @numba.njit(cache=True, nogil=True)
    def quantize_hist(x, bin_size, refl0, refl1, refl2, tile0, tile1, tile2, n_tiles, nbins):
        b_n, s0, s1, s2 = x.shape
        bins = np.empty(x.shape, dtype=np.int16)
        lut = np.empty(65536, dtype=np.int16)
        for b in range(b_n):
            lo, hi = 65535, 0
            for i in range(s0):
                for j in range(s1):
                    for k in range(s2):
                        u = int(np.rint(x[b, i, j, k] * np.float32(65535.0)))  # float32, as img_as_uint
                        bins[b, i, j, k] = u  # uint16 value kept as its int16 bit pattern for a moment
                        lo, hi = min(lo, u), max(hi, u)
            # skimage stretches [lo, hi] to [0, _GREY_MAX] in float64 and rounds; a constant image is clipped
            umin, span = (float(lo), float(hi - lo)) if hi > lo else (0.0, float(_GREY_MAX))
            for u in range(lo, hi + 1):  # uint16 value -> bin, computed once per value present
                q = min(max(np.rint((u - umin) / span * _GREY_MAX), 0.0), float(_GREY_MAX))
                lut[u] = np.int16(int(q) // bin_size)
            for i in range(s0):
                for j in range(s1):
                    for k in range(s2):
                        bins[b, i, j, k] = lut[np.uint16(bins[b, i, j, k])]
        hist = np.zeros((b_n * n_tiles, nbins), dtype=np.int64)
        n1, n2 = tile1.max() + 1, tile2.max() + 1
        for b in range(b_n):
            for i in range(refl0.shape[0]):
                for j in range(refl1.shape[0]):
                    row = (b * n_tiles) + (tile0[i] * n1 + tile1[j]) * n2
                    for k in range(refl2.shape[0]):
                        hist[row + tile2[k], bins[b, refl0[i], refl1[j], refl2[k]]] += 1
        return bins, hist

    @numba.njit(cache=True, nogil=True)
    def clip_map(hist, clim, tile_voxels):
        n_rows, nb = hist.shape
        maps = np.empty((n_rows, nb), dtype=np.float32)
        for t in range(n_rows):
            h = hist[t]
            n_excess = 0
            for g in range(nb):
                if h[g] > clim:
                    n_excess += h[g] - clim
                    h[g] = clim
            incr = n_excess // nb
            upper = clim - incr
            for g in range(nb):
                if h[g] < upper:
                    h[g] += incr
                    n_excess -= incr
            for g in range(nb):
                if upper <= h[g] < clim:
                    n_excess += h[g] - clim
                    h[g] = clim
            while n_excess > 0:  # skimage: redistribute remaining excess
                prev = n_excess
                for index in range(nb):
                    under = 0
                    for g in range(nb):
                        under += h[g] < clim
                    step = max(1, under // n_excess)
                    for g in range(index, nb, step):
                        if h[g] < clim:
                            h[g] += 1
                            n_excess -= 1
                    if n_excess <= 0:
                        break
                if prev == n_excess:
                    break
            total = 0  # skimage's map_histogram: float64 CDF scaled to the grey range, truncated
            for g in range(nb):
                total += h[g]
                maps[t, g] = min(int(total * (_GREY_MAX / tile_voxels)), _GREY_MAX)
        return maps

    @numba.njit(cache=True, nogil=True)
    def blend(bins, maps, lo0, hi0, w0, lo1, hi1, w1, lo2, hi2, w2):
        b_n, s0, s1, s2 = bins.shape
        out = np.empty(bins.shape, dtype=np.float32)
        for b in range(b_n):
            vmin, vmax = np.float32(np.inf), np.float32(-np.inf)
            for i in range(s0):
                ta, tb, wb = lo0[i], hi0[i], w0[i]
                for j in range(s1):
                    tc, td, wd = lo1[j], hi1[j], w1[j]
                    a00, a01 = (1 - wb) * (1 - wd), (1 - wb) * wd
                    a10, a11 = wb * (1 - wd), wb * wd
                    for k in range(s2):
                        te, tf, wf = lo2[k], hi2[k], w2[k]
                        g = bins[b, i, j, k]
                        acc = np.float32(0.0)  # float32 sum of float64 terms, as skimage accumulates
                        acc += np.float32(maps[b, ta, tc, te, g] * (a00 * (1 - wf)))
                        acc += np.float32(maps[b, ta, tc, tf, g] * (a00 * wf))
                        acc += np.float32(maps[b, ta, td, te, g] * (a01 * (1 - wf)))
                        acc += np.float32(maps[b, ta, td, tf, g] * (a01 * wf))
                        acc += np.float32(maps[b, tb, tc, te, g] * (a10 * (1 - wf)))
                        acc += np.float32(maps[b, tb, tc, tf, g] * (a10 * wf))
                        acc += np.float32(maps[b, tb, td, te, g] * (a11 * (1 - wf)))
                        acc += np.float32(maps[b, tb, td, tf, g] * (a11 * wf))
                        v = np.float32(np.floor(acc))
                        out[b, i, j, k] = v
                        vmin, vmax = min(vmin, v), max(vmax, v)
            if vmax > vmin:
                out[b] = (out[b] - vmin) / (vmax - vmin)
            else:
                out[b] = np.minimum(np.maximum(out[b], np.float32(0.0)), np.float32(1.0))
        return out

    return quantize_hist, clip_map, blend


def _reflect(size: int, length: int) -> np.ndarray:
    idx = np.arange(length)
    if size == 1:
        return np.zeros_like(idx)
    idx = idx % (2 * (size - 1))
    return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def clahe_volumes(x: np.ndarray, ks: tuple[int, int, int], clim: int, nbins: int) -> np.ndarray:
    """CLAHE of every item of ``x`` ``(B, S0, S1, S2)`` float32 in [0, 1] with box tiles ``ks``.

    ``clim`` is the clip limit in counts per bin (see ``transforms.intensity.clahe``). Returns ``(B, S0, S1, S2)``
    float32, each item rescaled to [0, 1] by its own range.
    """
    quantize_hist, clip_map, blend_kernel = _kernels()
    n = [-(-s // k) for s, k in zip(x.shape[1:], ks)]
    refl = [_reflect(s, m * k) for s, m, k in zip(x.shape[1:], n, ks)]
    tiles = [np.arange(m * k) // k for m, k in zip(n, ks)]
    bin_size = 1 + (_GREY_MAX + 1) // nbins
    bins, hist = quantize_hist(x, bin_size, *refl, *tiles, int(np.prod(n)), nbins)
    maps = clip_map(hist, clim, int(np.prod(ks))).reshape(x.shape[0], *n, nbins)
    args = []
    for s, k, m in zip(x.shape[1:], ks, n):
        p = np.arange(s) + k // 2
        blk = p // k
        args += [np.clip(blk - 1, 0, m - 1), np.clip(blk, 0, m - 1), (p % k) / k]
    return blend_kernel(bins, maps, *args)
