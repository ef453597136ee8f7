"""Partial labels: a case whose reference lacks some classes (``missing_labels`` in its datalist entry).

Where a structure was not contoured, its voxels are labelled 0 with the true background: 0 means "background
or one of the missing classes". :class:`MarkMissingLabelsd` writes that into the label map itself, so it
travels through batching and deep supervision to the loss: every 0 becomes the negative code
``-sum(2 ** (c - 1) for c in missing)``. :func:`split_missing` reads it back. The marginal loss
(:mod:`pipeline.training.partial_labels`) then merges the missing classes' probabilities into background for
that case (Shi et al. 2021, "Marginal loss and exclusion loss for partially supervised multi-organ
segmentation"), so the case neither rewards nor penalises predicting a missing class in its unlabelled voxels.

Put the transform last in the training chain (after random crops: ``RandCropByPosNegLabeld`` counts label > 0 as
foreground, so the code is background to it either way); it pops ``missing_labels`` so entries with and without
it batch together.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["MAX_CLASSES", "MarkMissingLabelsd", "mark_missing", "split_missing"]

MAX_CLASSES = 24  # the code stays an exact integer in float32 labels


def mark_missing(label, missing: Sequence[int]):
    """``label`` ``(1, *spatial)`` with its 0 voxels set to the code of the ``missing`` class ids (1..24).

    Returns the same type as ``label`` (numpy, torch or MetaTensor); unchanged when ``missing`` is empty.

    Raises:
        ValueError: ``label`` has several channels (region or one-hot labels), or an id is outside 1..24.
    """
    ids = sorted({int(c) for c in missing})
    if not ids:
        return label
    if any(not 1 <= c <= MAX_CLASSES for c in ids):
        raise ValueError(f"missing class ids must lie in 1..{MAX_CLASSES}, got {ids}")
    if label.shape[0] != 1:
        raise ValueError(
            f"missing labels need an integer label map (1, *spatial), got {label.shape[0]} channels (regions or "
            "one-hot): mark them before converting"
        )
    tensor = convert_to_tensor(label, track_meta=False)
    code = -float(sum(2 ** (c - 1) for c in ids))
    out = torch.where(tensor == 0, torch.as_tensor(code, dtype=tensor.dtype), tensor)
    return convert_to_dst_type(out, label)[0]


def split_missing(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and missing classes of a marked batch.

    Args:
        target: ``(B, 1, *spatial)`` label maps, 0 voxels possibly marked by :func:`mark_missing`.
        num_classes: channels of the prediction (background included).

    Returns:
        ``(labels, missing)``: ``labels`` as ``target`` with every code back to 0, and ``missing`` boolean
        ``(B, num_classes)``, True for each sample's missing classes (never for background).
    """
    flat = target.flatten(1)
    code = (-flat.amin(dim=1)).clamp_min(0).long()  # (B,)
    bits = torch.arange(num_classes - 1, device=target.device)
    missing = torch.zeros(target.shape[0], num_classes, dtype=torch.bool, device=target.device)
    missing[:, 1:] = ((code[:, None] >> bits) & 1).bool()
    return target.clamp_min(0), missing


class MarkMissingLabelsd(MapTransform):
    """Dictionary :func:`mark_missing`: the classes named in ``d[missing_key]`` are marked in ``keys``.

    Args:
        keys: the label map key(s).
        class_names: foreground class names in label order (``class_names[0]`` is label 1), the bundle's.
        missing_key: entry key listing the missing class names (popped, present or not).
        allow_missing_keys: skip absent label keys instead of raising.

    Raises:
        ValueError: a missing name is not among ``class_names`` (the message lists them).
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_names: Sequence[str],
        missing_key: str = "missing_labels",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.class_names = [str(n) for n in class_names]
        if len(self.class_names) > MAX_CLASSES:
            raise ValueError(f"MarkMissingLabelsd: at most {MAX_CLASSES} classes, got {len(self.class_names)}")
        self.missing_key = missing_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        names = d.pop(self.missing_key, None) or []
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(
                f"MarkMissingLabelsd: {self.missing_key} {unknown} are not among class_names {self.class_names}"
            )
        ids = [self.class_names.index(n) + 1 for n in names]
        for key in self.key_iterator(d):
            d[key] = mark_missing(d[key], ids)
        return d
