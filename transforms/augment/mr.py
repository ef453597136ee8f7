"""MR artefact augmentation: TorchIO's bias field, motion, ghosting and spike, plus a gamma, on image keys only.

:func:`mr_artifact_augmentation` returns an ordinary MONAI ``Compose``, so a bundle uses it through
``_target_: transforms.augment.mr.mr_artifact_augmentation`` after the spatial augmentation. Labels are never
passed to TorchIO: they come back unchanged, bit for bit.

TorchIO needs ``(C, X, Y, Z)`` volumes, so the preset is 3D only (a 2D ``spatial_dims`` is refused). TorchIO sees
the tensor without its affine (MONAI's dictionary wrapper builds the ``ScalarImage`` from the tensor alone), so
motion translations are in voxels, not mm. Each output gets the input's MONAI meta back (TorchIO's motion returns
plain tensors) and the input's dtype.

Gamma uses MONAI's ``RandAdjustContrastd`` rather than TorchIO's ``RandomGamma``: TorchIO raises negative values
to ``sign(I) |I| ** gamma``, which is finite but bends z-scored data symmetrically about 0; MONAI's gamma acts on
the sample rescaled to ``[0, 1]`` and, with ``retain_stats``, keeps its mean and standard deviation (nnU-Net's
gamma), so z-scored input stays z-scored.

Reproducibility: TorchIO draws from torch's global generator, the gamma from its MONAI ``RandomState``. Both are
seeded by ``monai.utils.set_determinism(seed)`` (and per worker by MONAI's ``DataLoader``); ``torch.manual_seed``
alone seeds the TorchIO part, ``Compose.set_random_state`` the gamma only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

from monai.config import NdarrayOrTensor
from monai.transforms import Compose, RandAdjustContrastd, RandTorchIOd
from monai.utils import convert_to_dst_type, convert_to_tensor

from transforms.augment.presets import _check

__all__ = ["RandTorchIOMetad", "mr_artifact_augmentation"]


class RandTorchIOMetad(RandTorchIOd):
    """``RandTorchIOd`` on ``(C, X, Y, Z)`` tensors that keeps each key's MONAI meta, affine and dtype.

    Args:
        keys: image keys; only these are handed to TorchIO.
        name: a TorchIO random transform, e.g. ``"RandomMotion"``.
        kwargs: its arguments (``p`` is its probability).
    """

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        sources = {}
        plain = dict(data)
        for key in self.key_iterator(plain):
            value = data[key]
            if value.ndim != 4:
                raise ValueError(
                    f"{type(self).__name__}({self.name}): {key!r} must be a (C, X, Y, Z) volume, "
                    f"got shape {tuple(value.shape)}; TorchIO's MR artefacts are 3D only."
                )
            sources[key] = value
            # TorchIO gets a plain, compact tensor: it deep-copies its Subject, and a patch cropped from a cached
            # scan is a view whose deep copy copies the whole scan (seconds per BRATS patch instead of ms)
            plain[key] = convert_to_tensor(value).contiguous()
        out = super().__call__(plain)
        for key, src in sources.items():
            out[key], *_ = convert_to_dst_type(out[key], src)  # src's type, dtype and MONAI meta
        return out


def mr_artifact_augmentation(
    keys: Sequence[str] | str,
    label_keys: Sequence[str] | str = (),
    *,
    spatial_dims: int = 3,
    bias_field_prob: float = 0.15,
    bias_coefficients: float = 0.4,
    motion_prob: float = 0.1,
    motion_degrees: float = 3.0,
    motion_translation: float = 3.0,
    motion_transforms: int = 2,
    ghosting_prob: float = 0.1,
    num_ghosts: tuple[int, int] = (2, 6),
    ghosting_intensity: tuple[float, float] = (0.2, 0.5),
    spike_prob: float = 0.1,
    spike_intensity: tuple[float, float] = (0.1, 0.3),
    gamma_prob: float = 0.15,
    log_gamma: float = 0.3,
) -> Compose:
    """Random MR artefacts on ``(C, X, Y, Z)`` image keys, each drawn independently with its own probability.

    Args:
        keys: image keys; labels must not be listed here.
        label_keys: label keys, only checked not to overlap ``keys`` (labels are never touched).
        spatial_dims: must be 3 (TorchIO works on volumes).
        bias_field_prob: probability of a smooth multiplicative bias field (TorchIO ``RandomBiasField``).
        bias_coefficients: its polynomial coefficients are drawn from ``U(-c, c)`` (order 3).
        motion_prob: probability of rigid motion during the acquisition (TorchIO ``RandomMotion``).
        motion_degrees: rotations drawn from ``U(-d, d)`` degrees about each axis.
        motion_translation: translations drawn from ``U(-t, t)`` voxels along each axis.
        motion_transforms: number of movements during the acquisition.
        ghosting_prob: probability of ghosting along one axis (TorchIO ``RandomGhosting``).
        num_ghosts: range of the number of ghosts.
        ghosting_intensity: range of the ghosts' intensity relative to the k-space maximum.
        spike_prob: probability of one k-space spike, a stripe pattern (TorchIO ``RandomSpike``).
        spike_intensity: range of the spike's intensity relative to the spectrum's maximum; z-scored input has
            no large DC term, so the same value gives a stripe about 10x fainter than on raw intensities.
        gamma_prob: probability of a gamma contrast change (MONAI ``RandAdjustContrastd``, mean and std kept).
        log_gamma: gamma is drawn from ``U(exp(-g), exp(g))``.

    Example (bundle YAML)::

        mr_artifacts:
          _target_: transforms.augment.mr.mr_artifact_augmentation
          keys: [image]
          label_keys: [label]
    """
    keys, _ = _check(
        keys,
        label_keys,
        spatial_dims,
        bias_field_prob=bias_field_prob,
        motion_prob=motion_prob,
        ghosting_prob=ghosting_prob,
        spike_prob=spike_prob,
        gamma_prob=gamma_prob,
    )
    if spatial_dims != 3:
        raise ValueError(
            "mr_artifact_augmentation: spatial_dims must be 3, TorchIO's MR artefacts need (C, X, Y, Z) volumes; "
            f"got {spatial_dims}."
        )
    for name, value in {
        "bias_coefficients": bias_coefficients,
        "motion_degrees": motion_degrees,
        "motion_translation": motion_translation,
        "log_gamma": log_gamma,
    }.items():
        if not value >= 0:
            raise ValueError(f"mr_artifact_augmentation: {name} must be >= 0, got {value}.")
    if not isinstance(motion_transforms, int) or motion_transforms < 1:
        raise ValueError(
            f"mr_artifact_augmentation: motion_transforms must be an int >= 1, got {motion_transforms!r}."
        )
    for name, (low, high), least in (
        ("num_ghosts", num_ghosts, 1),
        ("ghosting_intensity", ghosting_intensity, 0),
        ("spike_intensity", spike_intensity, 0),
    ):
        if not least <= low <= high:
            raise ValueError(
                f"mr_artifact_augmentation: {name} must satisfy {least} <= low <= high, got {(low, high)}."
            )
    keys = list(keys)
    return Compose(
        [
            RandTorchIOMetad(keys, "RandomBiasField", p=bias_field_prob, coefficients=bias_coefficients),
            RandTorchIOMetad(
                keys,
                "RandomMotion",
                p=motion_prob,
                degrees=motion_degrees,
                translation=motion_translation,
                num_transforms=motion_transforms,
            ),
            RandTorchIOMetad(
                keys,
                "RandomGhosting",
                p=ghosting_prob,
                num_ghosts=tuple(num_ghosts),
                intensity=tuple(ghosting_intensity),
            ),
            RandTorchIOMetad(
                keys, "RandomSpike", p=spike_prob, num_spikes=(1, 1), intensity=tuple(spike_intensity)
            ),
            RandAdjustContrastd(
                keys, prob=gamma_prob, gamma=(math.exp(-log_gamma), math.exp(log_gamma)), retain_stats=True
            ),
        ]
    )
