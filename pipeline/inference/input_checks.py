"""Checks of a loaded case against the bundle that will segment it; they warn, they never stop the case.

A scan whose modality differs from the bundle's is segmented anyway (the user may know better, e.g. a CT-like
synthetic image), but the warning goes to the log and to the case's entry in ``report.json``:

* DICOM: the series' Modality tag against the bundle's (``input_modalities`` in ``metadata.json``, else
  ``network_data_format.inputs.<key>.modality`` when it names one modality).
* CT bundles, any input: no voxel below :data:`AIR_HU` means no air in the image, so it is not CT in HU (an MR
  NIfTI, or CT stored without its rescale intercept). NIfTI has no modality tag, so this is its only check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.core.arrays import slabs

__all__ = ["AIR_HU", "bundle_modalities", "modality_warnings"]

AIR_HU = -500.0
"""Every CT in HU holds voxels below this (air around the body, in the lungs or the bowel)."""


def bundle_modalities(meta: Mapping[str, Any], input_keys: Sequence[str]) -> dict[str, str]:
    """Input key -> expected modality (``"CT"``, ``"MR"``) from a bundle's metadata; keys without one are left out.

    ``meta["input_modalities"]`` (a clinseg key, for bundles with several inputs) wins over
    ``network_data_format.inputs.<key>.modality``; combined values such as ``"CT+MR"`` are not a single modality.
    """
    explicit = meta.get("input_modalities") or {}
    inputs = (meta.get("network_data_format") or {}).get("inputs") or {}
    found = {}
    for key in input_keys:
        value = explicit.get(key) or (inputs.get(key) or {}).get("modality")
        if isinstance(value, str) and value and "+" not in value:
            found[key] = value.upper()
    return found


def modality_warnings(
    images: Mapping[str, torch.Tensor], expected: Mapping[str, str], bundle: str
) -> list[str]:
    """Warnings for images (``key -> (C, X, Y[, Z])`` MetaTensor as loaded, CT in HU) that do not look like the
    modality ``expected[key]`` of ``bundle``."""
    warnings = []
    for key, want in expected.items():
        image = images.get(key)
        if image is None:
            continue
        meta = getattr(image, "meta", {}) or {}
        got = str(meta.get("modality") or "").upper()
        if got and got != want:
            warnings.append(
                f"input {key!r}: the DICOM series is {got} but bundle {bundle} expects {want}; segmented anyway, "
                "check the result"
            )
        elif want == "CT" and image.numel():
            values = torch.as_tensor(image)
            low = min(float(values[index].min()) for _, _, index in slabs(values))
            if low > AIR_HU:
                warnings.append(
                    f"input {key!r}: lowest intensity {low:g} is above {AIR_HU:g} HU (no air), so it is not CT in "
                    f"HU as bundle {bundle} expects (MR, or CT without its rescale?); segmented anyway, check the result"
                )
    return warnings
