"""CT windowing maths: named HU window presets and a pure-torch window function.

A window (level L, width W) in HU maps ``[L - W/2, L + W/2]`` linearly onto ``[out_min, out_max]``.
Values outside are clipped unless ``clip=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
from monai.utils import look_up_option

__all__ = ["CT_WINDOW_PRESETS", "resolve_windows", "window_ct", "apply_windows"]

# (level, width) in HU, the standard radiology windows listed by Radiopaedia, "Windowing (CT)",
# https://radiopaedia.org/articles/windowing-ct
CT_WINDOW_PRESETS: MappingProxyType[str, tuple[float, float]] = MappingProxyType(
    {
        "brain": (40.0, 80.0),
        "subdural": (75.0, 215.0),
        # Radiopaedia gives two stroke windows, W:8 L:32 and W:40 L:40; the 40/40 window is the one most
        # commonly used for reading early ischaemia and is robust to scanner calibration offsets.
        "stroke": (40.0, 40.0),
        "lung": (-600.0, 1500.0),
        "mediastinum": (50.0, 350.0),
        "abdomen": (50.0, 400.0),
        "soft_tissue": (40.0, 400.0),
        # Radiopaedia's liver window is W:150 L:30 (a narrower alternative, 60/160, is used for contrast CT).
        "liver": (30.0, 150.0),
        # Radiopaedia's bone window is W:1800 L:400 (300/1500 is a common narrower variant).
        "bone": (400.0, 1800.0),
    }
)


def _check_window(level: float, width: float, name: str) -> tuple[float, float]:
    level, width = float(level), float(width)
    if not width > 0:
        raise ValueError(f"{name}: window width must be > 0 HU, got width={width}.")
    return level, width


def resolve_windows(
    level: float | None = None,
    width: float | None = None,
    preset: str | Sequence[str] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
) -> tuple[tuple[float, float], ...]:
    """Turn exactly one way of naming windows into a tuple of ``(level, width)`` pairs in HU.

    Args:
        level: window centre in HU, given together with ``width``.
        width: window width in HU (> 0).
        preset: a name from ``CT_WINDOW_PRESETS`` or a sequence of names (one output channel each).
        windows: explicit ``[(level, width), ...]`` pairs in HU.

    Raises:
        ValueError: none or more than one of (level/width, preset, windows) given, unknown preset
            (with a "did you mean"), or a width that is not positive.
    """
    given = [level is not None or width is not None, preset is not None, windows is not None]
    if sum(given) != 1:
        raise ValueError(
            "CT window: give exactly one of (level and width), preset, or windows; "
            f"got level={level}, width={width}, preset={preset!r}, windows={windows!r}."
        )
    if given[0]:
        if level is None or width is None:
            raise ValueError(
                f"CT window: level and width must be given together, got level={level}, width={width}."
            )
        return (_check_window(level, width, "CT window"),)
    if preset is not None:
        names = [preset] if isinstance(preset, str) else list(preset)
        if not names:
            raise ValueError("CT window: preset must name at least one window, got an empty sequence.")
        return tuple(look_up_option(n, CT_WINDOW_PRESETS) for n in names)
    pairs = list(windows)  # type: ignore[arg-type]
    if not pairs:
        raise ValueError("CT window: windows must hold at least one (level, width) pair, got an empty list.")
    out = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"CT window: windows[{i}] must be a (level, width) pair in HU, got {pair!r}.")
        out.append(_check_window(pair[0], pair[1], f"CT window windows[{i}]"))
    return tuple(out)


def window_ct(
    x: torch.Tensor,
    level: float | torch.Tensor,
    width: float | torch.Tensor,
    out_min: float = 0.0,
    out_max: float = 1.0,
    clip: bool = True,
) -> torch.Tensor:
    """Map HU values in ``[level - width/2, level + width/2]`` linearly onto ``[out_min, out_max]``.

    Args:
        x: HU values, any shape; integer input is computed in float32.
        level: window centre in HU (a tensor broadcasts against ``x``, e.g. shape ``(C, 1, 1[, 1])``).
        width: window width in HU (> 0).
        out_min: output value at the lower window edge.
        out_max: output value at the upper window edge.
        clip: clip the output to ``[out_min, out_max]``.

    Returns:
        Tensor of the shape of ``x`` (float32 unless ``x`` is a wider float), on the device of ``x``.
    """
    if not x.is_floating_point():
        x = x.float()
    lower = level - width / 2.0
    out = (x - lower) / width * (out_max - out_min) + out_min
    if clip:
        lo, hi = min(out_min, out_max), max(out_min, out_max)
        out = out.clamp(lo, hi)
    return out


def apply_windows(
    x: torch.Tensor,
    windows: Sequence[tuple[float, float]],
    out_min: float = 0.0,
    out_max: float = 1.0,
    clip: bool = True,
) -> torch.Tensor:
    """Window a channel-first HU image with one or several windows.

    Args:
        x: HU image ``(C, X, Y[, Z])``.
        windows: ``(level, width)`` pairs in HU. One window is applied to every channel; N > 1 windows
            need ``C == 1`` and are stacked as channels.
        out_min: output value at the lower window edge.
        out_max: output value at the upper window edge.
        clip: clip the output to ``[out_min, out_max]``.

    Returns:
        ``(C, X, Y[, Z])`` for one window, ``(N, X, Y[, Z])`` for N windows.
    """
    if x.ndim < 2:
        raise ValueError(f"CT window: expected a channel-first image (C, X, Y[, Z]), got {tuple(x.shape)}.")
    if len(windows) == 1:
        return window_ct(x, windows[0][0], windows[0][1], out_min, out_max, clip)
    if x.shape[0] != 1:
        raise ValueError(
            f"CT window: {len(windows)} windows are stacked as channels and need a single-channel HU image, "
            f"got {x.shape[0]} channels (shape {tuple(x.shape)})."
        )
    dtype = x.dtype if x.is_floating_point() else torch.float32
    params = torch.tensor(windows, dtype=dtype, device=x.device)
    params = params.reshape(len(windows), 2, *([1] * (x.ndim - 1)))
    return window_ct(x, params[:, 0], params[:, 1], out_min, out_max, clip)
