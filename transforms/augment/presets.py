"""Augmentation presets built from MONAI dictionary transforms, for 2D and 3D (``spatial_dims``).

Every function returns ordinary MONAI transforms, so a bundle can use them through
``_target_: transforms.augment.presets.standard_augmentation``. Images (``keys``) are resampled bilinearly, labels
(``label_keys``) with nearest neighbour, and each MONAI transform draws its random parameters once for all
keys, so images and labels move together. Intensity changes touch ``keys`` only.

Invertibility: flips and the affine (rotation, scaling) in :func:`spatial_augmentation` record themselves in
``applied_operations`` and are undone by ``Compose.inverse``. MONAI's elastic transforms record nothing and
cannot be inverted, so :func:`elastic_preset` belongs in training pipelines only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import ensure_tuple

__all__ = ["elastic_preset", "spatial_augmentation", "intensity_augmentation", "standard_augmentation"]


def _check(keys: Sequence[str] | str, label_keys: Sequence[str] | str, spatial_dims: int, **probs: float):
    keys, label_keys = tuple(ensure_tuple(keys)), tuple(ensure_tuple(label_keys))
    if not keys:
        raise ValueError("augmentation: keys must name at least one image key, got none.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"augmentation: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    both = set(keys) & set(label_keys)
    if both:
        raise ValueError(f"augmentation: keys and label_keys must not overlap, both contain {sorted(both)}.")
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation: {name} must be a probability in [0, 1], got {p}.")
    return keys, label_keys


def elastic_preset(
    keys: Sequence[str] | str,
    spatial_dims: int,
    label_keys: Sequence[str] | str = (),
    *,
    prob: float = 0.2,
    magnitude_range: tuple[float, float] | None = None,
    spacing: float = 16.0,
    sigma_range: tuple[float, float] = (5.0, 8.0),
    padding_mode: str = "zeros",
    device: str | None = None,
) -> Rand2DElasticd | Rand3DElasticd:
    """Random elastic deformation, one draw shared by images and labels (not invertible).

    Args:
        keys: image keys ``(C, H, W[, D])``, resampled bilinearly.
        spatial_dims: 2 (``Rand2DElasticd``) or 3 (``Rand3DElasticd``).
        label_keys: label keys, resampled with nearest neighbour so label values stay in the label set.
        prob: probability of deforming a sample.
        magnitude_range: offset magnitude range; 2D: control-point offsets in pixels (default ``(1, 3)``);
            3D: amplitude of the voxel noise before Gaussian smoothing (default ``(50, 150)``, a few voxels).
        spacing: 2D only, distance between control points in pixels.
        sigma_range: 3D only, range of the Gaussian smoothing sigma in voxels.
        padding_mode: grid-sample padding outside the image.
        device: device of the deformation grid (``None``: the device of the first key's tensor).
    """
    keys, label_keys = _check(keys, label_keys, spatial_dims, prob=prob)
    all_keys = keys + label_keys
    mode = ("bilinear",) * len(keys) + ("nearest",) * len(label_keys)
    common = dict(keys=all_keys, prob=prob, mode=mode, padding_mode=padding_mode, device=device)
    if spatial_dims == 2:
        magnitude = magnitude_range or (1.0, 3.0)
        return Rand2DElasticd(spacing=(spacing, spacing), magnitude_range=magnitude, **common)
    return Rand3DElasticd(sigma_range=sigma_range, magnitude_range=magnitude_range or (50.0, 150.0), **common)


def spatial_augmentation(
    keys: Sequence[str] | str,
    spatial_dims: int,
    label_keys: Sequence[str] | str = (),
    *,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] | None = None,
    affine_prob: float = 0.2,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    padding_mode: str = "zeros",
) -> list:
    """Invertible spatial augmentation: independent flips per axis and a random rotation + scaling.

    Args:
        keys: image keys ``(C, H, W[, D])``, resampled bilinearly.
        spatial_dims: 2 or 3.
        label_keys: label keys, resampled with nearest neighbour.
        flip_prob: probability of flipping, drawn for each axis in ``flip_axes`` separately.
        flip_axes: spatial axes to flip (0 = X); ``None`` flips any axis.
        affine_prob: probability of the random affine.
        rotate_deg: rotation range in degrees, ``U(-rotate_deg, rotate_deg)`` about every axis (one in 2D).
        scale: relative scaling range, factor ``1 + U(-scale, scale)`` per axis.
        padding_mode: grid-sample padding outside the image.
    """
    keys, label_keys = _check(keys, label_keys, spatial_dims, flip_prob=flip_prob, affine_prob=affine_prob)
    axes = tuple(range(spatial_dims)) if flip_axes is None else tuple(flip_axes)
    if not all(isinstance(a, int) and 0 <= a < spatial_dims for a in axes):
        raise ValueError(f"spatial_augmentation: flip_axes must be axes in [0, {spatial_dims}), got {axes}.")
    if rotate_deg < 0 or not 0 <= scale < 1:
        raise ValueError(
            f"spatial_augmentation: need rotate_deg >= 0 and 0 <= scale < 1, got {rotate_deg}, {scale}."
        )
    all_keys = keys + label_keys
    mode = ("bilinear",) * len(keys) + ("nearest",) * len(label_keys)
    n_rot = 1 if spatial_dims == 2 else 3
    flips = [RandFlipd(all_keys, prob=flip_prob, spatial_axis=a) for a in axes]
    affine = RandAffined(
        all_keys,
        prob=affine_prob,
        rotate_range=(math.radians(rotate_deg),) * n_rot,
        scale_range=(scale,) * spatial_dims,
        mode=mode,
        padding_mode=padding_mode,
    )
    return [*flips, affine]


def intensity_augmentation(
    keys: Sequence[str] | str,
    *,
    prob: float = 0.15,
    gamma: tuple[float, float] = (0.7, 1.5),
    noise_std: float = 0.05,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
    scale: float = 0.1,
    shift: float = 0.1,
) -> list:
    """Random gamma, Gaussian noise, blur, intensity scaling and shift on image keys (data in ``[0, 1]``).

    Args:
        keys: image keys ``(C, H, W[, D])``; labels must not be listed here.
        prob: probability of each of the five transforms, drawn independently.
        gamma: gamma range of ``RandAdjustContrastd``.
        noise_std: maximum standard deviation of the additive Gaussian noise.
        blur_sigma: range of the Gaussian blur sigma in voxels, the same range for every axis.
        scale: intensity scaling ``v * (1 + U(-scale, scale))``.
        shift: intensity offset ``v + U(-shift, shift)``.
    """
    keys, _ = _check(keys, (), 2, prob=prob)
    if not 0 < gamma[0] <= gamma[1]:
        raise ValueError(f"intensity_augmentation: gamma must satisfy 0 < low <= high, got {gamma}.")
    return [
        RandAdjustContrastd(keys, prob=prob, gamma=tuple(gamma)),
        RandGaussianNoised(keys, prob=prob, std=noise_std),
        RandGaussianSmoothd(keys, sigma_x=blur_sigma, sigma_y=blur_sigma, sigma_z=blur_sigma, prob=prob),
        RandScaleIntensityd(keys, factors=scale, prob=prob),
        RandShiftIntensityd(keys, offsets=shift, prob=prob),
    ]


def standard_augmentation(
    keys: Sequence[str] | str,
    spatial_dims: int,
    label_keys: Sequence[str] | str = (),
    *,
    flip_prob: float = 0.5,
    affine_prob: float = 0.2,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    intensity_prob: float = 0.15,
    gamma: tuple[float, float] = (0.7, 1.5),
    noise_std: float = 0.05,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
) -> Compose:
    """Flips, rotation + scaling (all keys), then gamma, noise, blur, scale and shift (image keys only).

    The spatial part is invertible through ``Compose.inverse``; see :func:`spatial_augmentation` and
    :func:`intensity_augmentation` for the arguments. Seed it with ``set_random_state`` on the result.

    Example (bundle YAML)::

        train_aug:
          _target_: transforms.augment.presets.standard_augmentation
          keys: [image]
          label_keys: [label]
          spatial_dims: 3
    """
    spatial = spatial_augmentation(
        keys,
        spatial_dims,
        label_keys,
        flip_prob=flip_prob,
        affine_prob=affine_prob,
        rotate_deg=rotate_deg,
        scale=scale,
    )
    intensity = intensity_augmentation(
        keys,
        prob=intensity_prob,
        gamma=gamma,
        noise_std=noise_std,
        blur_sigma=blur_sigma,
        scale=intensity_scale,
        shift=intensity_shift,
    )
    return Compose(spatial + intensity)
