"""A label map on the input grid handed back as the kind of image it came from (nnU-Net's and TotalSegmentator's
array-in, array-out APIs; MONAI Deploy's in-memory images).

The kinds are those :mod:`transforms.io.memory` loads: MetaTensor -> MetaTensor (the input's meta and affine, its
channel layout), nibabel -> an image of the same class with the input's affine (and sform/qform codes),
SimpleITK -> an image with the input's origin, spacing and direction, ``(array, affine)`` -> an array of the
same library (numpy or torch) and channel layout, whose affine is the input's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from transforms.io.memory import image_kind

__all__ = ["labels_like"]


def labels_like(labels: MetaTensor, like: Any) -> Any:
    """``labels`` ``(1, X, Y[, Z])`` uint8, on the grid ``like`` was loaded on, as ``like``'s kind.

    Raises:
        TypeError: ``like`` is not an in-memory image kind.
    """
    kind = image_kind(like)
    plain = labels.as_tensor().detach().cpu() if isinstance(labels, MetaTensor) else torch.as_tensor(labels)
    spatial_dims = plain.ndim - 1
    if kind == "MetaTensor":
        values = plain if like.ndim == spatial_dims + 1 else plain[0]
        return MetaTensor(values.to(like.device), meta={**like.meta, "affine": like.affine.clone()})
    if kind == "array":
        array, _ = like
        values = plain if array.ndim == spatial_dims + 1 else plain[0]
        return values.to(array.device) if isinstance(array, torch.Tensor) else values.numpy()
    if kind == "nibabel":
        out = type(like)(plain[0].numpy(), like.affine)
        header = like.header
        if hasattr(header, "get_sform"):
            out.set_sform(like.affine, code=int(header["sform_code"]))
            out.set_qform(like.affine, code=int(header["qform_code"]))
        return out
    if kind == "SimpleITK":
        out = sitk.GetImageFromArray(np.ascontiguousarray(plain[0].numpy().transpose()))
        out.CopyInformation(like)
        return out
    raise TypeError(f"cannot return labels as a {type(like).__name__}; not an in-memory image kind")
