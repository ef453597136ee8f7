"""Region-based labels (nnU-Net's region training): nested label sets such as BRATS's whole tumour (1, 2, 3, 4)
⊃ core (1, 3, 4) ⊃ enhancing (4), one sigmoid output channel per region.

:class:`LabelToRegions` turns a label map ``(1, ...)`` into region masks ``(R, ...)``; :class:`RegionsToLabels`
turns region probabilities ``(R, ...)`` back into a label map as nnU-Net does (``regions_class_order``):
regions go from outermost to innermost and each voxel takes the label of the innermost region whose
probability exceeds the threshold. The label a region gives (:func:`region_class_order`) is the smallest of
its labels that no later region holds: whole tumour -> 2, core -> 1 (1 and 3 are not told apart), enhancing -> 4.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "LabelToRegions",
    "LabelToRegionsd",
    "RegionsToLabels",
    "RegionsToLabelsd",
    "check_regions",
    "region_class_order",
]


def check_regions(regions: Sequence[Sequence[int]]) -> list[list[int]]:
    """``regions`` as sorted lists of label values, after checking each is a non-empty set of labels > 0."""
    if isinstance(regions, (str, bytes)) or not isinstance(regions, Sequence) or not regions:
        raise ValueError(f"regions must be a non-empty list of label lists, got {regions!r}")
    checked = []
    for i, region in enumerate(regions):
        values = [region] if isinstance(region, int) else list(region)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"region {i} must list label values >= 1, got {region!r}")
        checked.append(sorted(set(values)))
    return checked


def region_class_order(regions: Sequence[Sequence[int]]) -> list[int]:
    """The label each region gives its voxels: the smallest of its labels held by no later region.

    Raises:
        ValueError: when a region's labels all lie in later regions (declared inside out, or a duplicate):
            regions must go from outermost to innermost.
    """
    checked = check_regions(regions)
    order = []
    for i, region in enumerate(checked):
        inner = {v for later in checked[i + 1 :] for v in later}
        own = [v for v in region if v not in inner]
        if not own:
            raise ValueError(
                f"region {i} {region} lies inside the regions after it: declare regions from outermost to "
                "innermost, each adding at least one label of its own"
            )
        order.append(own[0])
    return order


class LabelToRegions(Transform):
    """Label map ``(1, ...)`` -> region masks ``(R, ...)``, float32 0/1 (a tensor; a MetaTensor with the input's
    meta when given one), channel ``r`` set where the label is one of ``regions[r]``.

    Args:
        regions: label values per region, outermost first, e.g. ``[[1, 2, 3, 4], [1, 3, 4], [4]]``.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Sequence[Sequence[int]]) -> None:
        self.regions = check_regions(regions)

    def __call__(self, label: NdarrayOrTensor) -> torch.Tensor:
        values = convert_to_tensor(label)  # a plain tensor (MetaTensor's meta dropped)
        if values.ndim < 2 or values.shape[0] != 1:
            raise ValueError(
                f"LabelToRegions: label must be (1, ...) label values, got shape {tuple(values.shape)}"
            )
        values = values[0].round().long()
        masks = [torch.isin(values, torch.tensor(r, device=values.device)) for r in self.regions]
        return _like(label, torch.stack(masks).to(torch.float32))


class RegionsToLabels(Transform):
    """Region probabilities ``(R, ...)`` -> label map ``(1, ...)`` uint8: each voxel takes the label
    (:func:`region_class_order`) of the last region whose value exceeds ``threshold``, 0 where none does.

    Args:
        regions: label values per region, outermost first (as :class:`LabelToRegions`).
        threshold: probability above which a voxel is inside a region (0.5 for sigmoid outputs).
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Sequence[Sequence[int]], threshold: float = 0.5) -> None:
        self.regions = check_regions(regions)
        self.class_order = region_class_order(self.regions)
        self.threshold = float(threshold)

    def __call__(self, probabilities: NdarrayOrTensor) -> torch.Tensor:
        probs = convert_to_tensor(probabilities)
        if probs.ndim < 2 or probs.shape[0] != len(self.regions):
            raise ValueError(
                f"RegionsToLabels: expected ({len(self.regions)}, ...) region probabilities, got shape "
                f"{tuple(probs.shape)}"
            )
        labels = torch.zeros((1, *probs.shape[1:]), dtype=torch.uint8, device=probs.device)
        for channel, value in enumerate(self.class_order):
            labels[0][probs[channel] > self.threshold] = value
        return _like(probabilities, labels)


def _like(reference: NdarrayOrTensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` with ``reference``'s meta (affine, applied operations) when it is a MetaTensor."""
    if isinstance(reference, MetaTensor):
        return convert_to_dst_type(values, reference, dtype=values.dtype)[0]
    return values


class LabelToRegionsd(MapTransform):
    """Dictionary :class:`LabelToRegions`: each key's label map replaced by its region masks.

    Args:
        keys: label keys.
        regions: label values per region, outermost first.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, regions: Sequence[Sequence[int]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToRegions(regions)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class RegionsToLabelsd(MapTransform):
    """Dictionary :class:`RegionsToLabels`: each key's region probabilities replaced by a label map.

    Args:
        keys: region probability keys (``pred``).
        regions: label values per region, outermost first.
        threshold: probability above which a voxel is inside a region.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        regions: Sequence[Sequence[int]],
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToLabels(regions, threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
