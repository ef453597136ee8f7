"""Z-score inside the foreground when the background is a constant that need not be zero.

MONAI's ``NormalizeIntensityd(nonzero=True)`` takes the foreground to be the non-zero voxels. Skull-stripped
MR that another tool has already rescaled (BRATS' ``*_subtrMeanDivStd`` images: background -3.16 and -2.75)
has a constant background at the image minimum instead, and a whole-image z-score there mixes the brain's
statistics with the background's. This transform takes the foreground to be the voxels above each channel's
minimum, z-scores them with their own mean and std, and sets the background to 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["ForegroundZScore", "ForegroundZScored"]


class ForegroundZScore(Transform):
    """``(C, X, Y[, Z])`` -> same shape: per channel, voxels above the channel's minimum z-scored, others 0.

    A channel without such voxels (a constant image) becomes all zeros.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        out = torch.zeros_like(data)
        for c in range(data.shape[0]):
            channel = data[c]
            inside = channel > channel.min()
            if inside.any():
                values = channel[inside]
                out[c][inside] = (values - values.mean()) / (values.std(unbiased=False) + self.eps)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class ForegroundZScored(MapTransform):
    """Dictionary version of :class:`ForegroundZScore` (images only; never a label key)."""

    def __init__(self, keys: KeysCollection, eps: float = 1e-8, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ForegroundZScore(eps)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
