"""Region declarations of a dataset: ``"whole_tumour=1,2,3,4;core=1,3,4;enhancing=4"`` (``clinseg plan
--regions``) or a datalist's ``regions`` (``clinseg import`` keeps nnU-Net's), checked against its labels.

Regions are kept in declaration order, outermost first (nnU-Net's convention); the label maths is
:mod:`transforms.labels.regions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transforms.labels.regions import region_class_order

__all__ = ["NO_REGIONS", "parse_regions", "resolve_regions", "validate_regions"]

NO_REGIONS = "none"
"""``--regions none``: train on the labels even when the datalist declares regions."""


def parse_regions(spec: str) -> dict[str, list[int]]:
    """``"whole_tumour=1,2,3,4;core=1,3,4;enhancing=4"`` -> ``{"whole_tumour": [1, 2, 3, 4], ...}`` (in order)."""
    regions: dict[str, list[int]] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--regions: {part!r} is not NAME=LABEL,LABEL,... (e.g. 'core=1,3,4')")
        if name in regions:
            raise ValueError(f"--regions: region {name!r} is declared twice")
        try:
            regions[name] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(
                f"--regions: region {name!r} needs integer label values, got {values!r}"
            ) from err
    if not regions:
        raise ValueError(
            f"--regions: no region in {spec!r}; e.g. 'whole_tumour=1,2,3,4;core=1,3,4;enhancing=4'"
        )
    return regions


def validate_regions(
    regions: Mapping[str, Any], labels: Mapping[Any, str], source: str
) -> dict[str, list[int]]:
    """``regions`` (name -> label values) checked against the dataset's ``labels`` (value -> name).

    Raises:
        ValueError: naming ``source`` when a region is empty, lists a label the dataset lacks, or lies
            inside a later region (regions go from outermost to innermost).
    """
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"{source}: regions must map region names to label values, got {regions!r}")
    known = {int(v) for v in labels if int(v) > 0}
    checked: dict[str, list[int]] = {}
    for name, values in regions.items():
        values = [values] if isinstance(values, int) else values
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{source}: region {name!r} must list label values, got {values!r}")
        try:
            ints = sorted({int(v) for v in values})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: region {name!r} needs integer label values, got {values!r}") from err
        unknown = [v for v in ints if v not in known]
        if unknown:
            raise ValueError(
                f"{source}: region {name!r} lists label value(s) {unknown} that the dataset's labels "
                f"{sorted(known)} lack"
            )
        checked[str(name)] = ints
    try:
        region_class_order(list(checked.values()))
    except ValueError as err:
        raise ValueError(f"{source}: regions {checked}: {err}") from err
    return checked


def resolve_regions(
    spec: str | Mapping[str, Any] | None, content: Mapping[str, Any], source: str
) -> dict[str, list[int]] | None:
    """The regions in effect: ``spec`` (a ``--regions`` string or a mapping) when given, else the datalist's own
    ``regions``; ``None`` (train on labels) when neither declares any or ``spec`` is ``"none"``."""
    if isinstance(spec, str) and spec.strip().lower() == NO_REGIONS:
        return None
    if spec is None:
        declared = content.get("regions")
        if not declared:
            return None
        return validate_regions(declared, content.get("labels") or {}, f"{source} (its 'regions')")
    regions = parse_regions(spec) if isinstance(spec, str) else spec
    return validate_regions(regions, content.get("labels") or {}, f"{source} (--regions)")
