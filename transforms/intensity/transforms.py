"""Intensity transforms: CT windowing (array + dict, deterministic + random) and CLAHE.

The maths lives in :mod:`transforms.intensity.ct_window` and :mod:`transforms.intensity.clahe`; these classes only validate
arguments, convert numpy/torch/MetaTensor, and loop over dictionary keys. MR normalization needs nothing new:
use MONAI's ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` (z-score) or
``ScaleIntensityRangePercentilesd(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)`` (to [0, 1]).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from transforms.intensity.clahe import check_clahe_params, clahe
from transforms.intensity.ct_window import apply_windows, resolve_windows

__all__ = ["CTWindow", "CTWindowd", "RandCTWindowd", "CLAHE", "CLAHEd", "RandCLAHEd"]


class CTWindow(Transform):
    """Window a CT image given in HU to ``[out_min, out_max]``.

    One window applies to every channel of ``(C, X, Y[, Z])``; N windows turn a single-channel
    ``(1, X, Y[, Z])`` HU image into ``(N, X, Y[, Z])``, one channel per window. Works on numpy arrays,
    tensors on any device and MetaTensors (meta and affine kept).

    Args:
        level: window centre in HU (with ``width``), e.g. ``40``.
        width: window width in HU, e.g. ``400``.
        preset: a name from ``transforms.intensity.ct_window.CT_WINDOW_PRESETS`` (``"brain"``, ``"lung"``, ...) or a
            list of names stacked as channels.
        windows: explicit ``[(level, width), ...]`` pairs in HU stacked as channels.
        out_min: output value at the lower window edge.
        out_max: output value at the upper window edge.
        clip: clip the output to ``[out_min, out_max]``.

    Example:
        ``CTWindow(level=40, width=400)`` maps -160 HU to 0 and 240 HU to 1.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        level: float | None = None,
        width: float | None = None,
        preset: str | Sequence[str] | None = None,
        windows: Sequence[tuple[float, float]] | None = None,
        out_min: float = 0.0,
        out_max: float = 1.0,
        clip: bool = True,
    ) -> None:
        self.windows = resolve_windows(level, width, preset, windows)
        if out_min == out_max:
            raise ValueError(f"CTWindow: out_min and out_max must differ, got both {out_min}.")
        self.out_min, self.out_max, self.clip = float(out_min), float(out_max), bool(clip)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Window ``img`` ``(C, X, Y[, Z])`` in HU; returns the same type as ``img``."""
        x = convert_to_tensor(img, track_meta=False)
        out = apply_windows(x, self.windows, self.out_min, self.out_max, self.clip)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class CTWindowd(MapTransform):
    """Dictionary version of :class:`CTWindow`; the same window(s) for every key in ``keys``."""

    backend = CTWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        level: float | None = None,
        width: float | None = None,
        preset: str | Sequence[str] | None = None,
        windows: Sequence[tuple[float, float]] | None = None,
        out_min: float = 0.0,
        out_max: float = 1.0,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = CTWindow(level, width, preset, windows, out_min, out_max, clip)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d


class RandCTWindowd(RandomizableTransform, MapTransform):
    """CT windowing with randomly jittered windows, one draw per call shared by all keys.

    With probability ``prob`` each window's level is shifted by ``U(-level_jitter, level_jitter)`` HU and
    its width scaled by ``1 + U(-width_jitter, width_jitter)``; otherwise the base window is applied, so
    the output is always windowed (a training pipeline can swap ``CTWindowd`` for this class).

    Args:
        keys: keys of the HU images ``(C, X, Y[, Z])``.
        prob: probability of jittering the window.
        level_jitter: maximum level shift in HU (>= 0).
        width_jitter: maximum relative width change, in ``[0, 1)``.
        level, width, preset, windows, out_min, out_max, clip: the base window, as in :class:`CTWindow`.
        allow_missing_keys: do not raise when a key is missing.
    """

    backend = CTWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        level_jitter: float = 0.0,
        width_jitter: float = 0.0,
        level: float | None = None,
        width: float | None = None,
        preset: str | Sequence[str] | None = None,
        windows: Sequence[tuple[float, float]] | None = None,
        out_min: float = 0.0,
        out_max: float = 1.0,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not level_jitter >= 0:
            raise ValueError(f"RandCTWindowd: level_jitter must be >= 0 HU, got {level_jitter}.")
        if not 0 <= width_jitter < 1:
            raise ValueError(f"RandCTWindowd: width_jitter must be in [0, 1), got {width_jitter}.")
        self.level_jitter, self.width_jitter = float(level_jitter), float(width_jitter)
        self.base = CTWindow(level, width, preset, windows, out_min, out_max, clip)
        self._windower = self.base

    def randomize(self, data: object = None) -> None:
        """Draw whether to jitter and, if so, one level shift and width factor per window."""
        super().randomize(None)
        if not self._do_transform:
            self._windower = self.base
            return
        n = len(self.base.windows)
        shifts = self.R.uniform(-self.level_jitter, self.level_jitter, size=n)
        factors = 1.0 + self.R.uniform(-self.width_jitter, self.width_jitter, size=n)
        base = self.base.windows
        jittered = [(lv + float(s), wd * float(f)) for (lv, wd), s, f in zip(base, shifts, factors)]
        b = self.base
        self._windower = CTWindow(windows=jittered, out_min=b.out_min, out_max=b.out_max, clip=b.clip)

    @property
    def current_windows(self) -> tuple[tuple[float, float], ...]:
        """The ``(level, width)`` pairs in HU used by the last call."""
        return self._windower.windows

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[key] = self._windower(d[key])
        return d


class CLAHE(Transform):
    """Contrast limited adaptive histogram equalization of an image in [0, 1], channel by channel.

    Matches ``skimage.exposure.equalize_adapthist`` per channel; see :func:`transforms.clahe.clahe`.
    Window or rescale to [0, 1] first (e.g. ``CTWindow`` or MONAI ``ScaleIntensityRangePercentiles``).

    Args:
        kernel_size: tile shape in voxels, an int for every spatial dim or one per dim; ``None`` gives 1/8
            of each dimension.
        clip_limit: normalized clip limit in [0, 1]; higher gives more contrast, 0 disables clipping.
        nbins: number of histogram bins.
        slicewise: for ``(C, H, W, D)`` volumes, 2D CLAHE on every slice along the last axis instead of 3D.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        kernel_size: int | Sequence[int] | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        slicewise: bool = False,
    ) -> None:
        check_clahe_params(kernel_size, clip_limit, nbins)
        scalar = kernel_size is None or isinstance(kernel_size, int)
        self.kernel_size = kernel_size if scalar else tuple(kernel_size)
        self.clip_limit, self.nbins, self.slicewise = float(clip_limit), nbins, bool(slicewise)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Equalize ``img`` ``(C, H, W[, D])`` in [0, 1]; returns float32 of the same type and shape."""
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            raise TypeError(f"CLAHE: expected a floating point image in [0, 1], got dtype {x.dtype}.")
        out = clahe(x, self.kernel_size, self.clip_limit, self.nbins, self.slicewise)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class CLAHEd(MapTransform):
    """Dictionary version of :class:`CLAHE`, the same parameters for every key."""

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        kernel_size: int | Sequence[int] | None = None,
        clip_limit: float = 0.01,
        nbins: int = 256,
        slicewise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.equalizer = CLAHE(kernel_size, clip_limit, nbins, slicewise)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.equalizer(d[key])
        return d


class RandCLAHEd(RandomizableTransform, MapTransform):
    """With probability ``prob``, CLAHE with a random clip limit (and tile size), one draw for all keys.

    Args:
        keys: keys of images ``(C, H, W[, D])`` in [0, 1].
        prob: probability of applying CLAHE; otherwise the images pass through unchanged.
        clip_limit_range: ``(low, high)`` range of the uniformly drawn clip limit.
        kernel_size_range: ``(low, high)`` range in voxels of a uniformly drawn integer tile size, the same
            for every spatial dim; ``None`` keeps the default tiles (1/8 of each dimension).
        nbins: number of histogram bins.
        slicewise: 2D CLAHE per slice along the last axis for volumes.
        allow_missing_keys: do not raise when a key is missing.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        clip_limit_range: tuple[float, float] = (0.005, 0.03),
        kernel_size_range: tuple[int, int] | None = None,
        nbins: int = 256,
        slicewise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        lo, hi = (float(v) for v in clip_limit_range)
        if not 0 <= lo <= hi:
            raise ValueError(f"RandCLAHEd: clip_limit_range needs 0 <= low <= high, got {clip_limit_range}.")
        if kernel_size_range is not None and not 1 <= int(kernel_size_range[0]) <= int(kernel_size_range[1]):
            raise ValueError(
                f"RandCLAHEd: kernel_size_range needs 1 <= low <= high voxels, got {kernel_size_range}."
            )
        check_clahe_params(None, hi, nbins)
        self.clip_limit_range = (lo, hi)
        ksr = kernel_size_range
        self.kernel_size_range = None if ksr is None else (int(ksr[0]), int(ksr[1]))
        self.nbins, self.slicewise = nbins, slicewise
        self.equalizer: CLAHE | None = None

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply, and the clip limit and tile size."""
        super().randomize(None)
        if not self._do_transform:
            return
        clip_limit = float(self.R.uniform(*self.clip_limit_range))
        kernel = None
        if self.kernel_size_range is not None:
            kernel = int(self.R.randint(self.kernel_size_range[0], self.kernel_size_range[1] + 1))
        self.equalizer = CLAHE(kernel, clip_limit, self.nbins, self.slicewise)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.equalizer(d[key])
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
        return d
