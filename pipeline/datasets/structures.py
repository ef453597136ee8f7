"""Structure maps: label numbers -> structure names with aliases, name matching, and the overlap rule.

A map is written ``"1=GTV-1;2=Lung L|Lung_L|LUNG_LEFT;3=Spinal cord"`` or as a JSON file
``{"1": "GTV-1", "2": ["Lung L", "LUNG_LEFT"]}``; the first name of each label is its name in the datalist.
Names match case-insensitively with runs of spaces, underscores and hyphens folded to one ``_``
(``Lung L`` = ``lung_l`` = ``LUNG-L``); several source structures matching one label are united.

Overlap rule: where structures overlap, the voxel takes the label of the smaller structure (fewer voxels in
that patient), ties going to the higher label number; so a tumour inside an organ, or an organ inside the body
outline, keeps its own label. Overlapping voxels are counted in the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pipeline.datasets.model import DatasetImportError


def fold_name(name: str) -> str:
    """The matching form of a structure name: ``"Lung L"`` -> ``"lung_l"``."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip().casefold()).strip("_")


def parse_structures(spec: str | Path) -> dict[int, list[str]]:
    """Parse a structure map (inline spec or JSON file path) to label number -> names (first = label name).

    Raises:
        DatasetImportError: bad syntax, a label number outside 1..65535, or one name under two labels.
    """
    where = "--structures"
    if Path(str(spec)).suffix.lower() == ".json":
        path = Path(spec)
        where = str(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetImportError(f"structure map {path}: cannot read it as JSON ({err})") from err
        if not isinstance(raw, dict):
            raise DatasetImportError(f"structure map {path} must be a JSON object label -> name(s)")
        items = [(k, v if isinstance(v, list) else [v]) for k, v in raw.items()]
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(spec).replace(",", ";").split(";"))):
            key, sep, value = part.partition("=")
            if not sep:
                raise DatasetImportError(f"{where}: expected LABEL=NAME[|ALIAS...], got {part!r}")
            items.append((key, value.split("|")))
    out: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    for key, names in items:
        try:
            value = int(str(key).strip())
        except ValueError as err:
            raise DatasetImportError(f"{where}: label {key!r} is not an integer") from err
        names = [str(n).strip() for n in names if str(n).strip()]
        if not 1 <= value <= 65535 or not names or value in out:
            raise DatasetImportError(
                f"{where}: label {value} needs a number in 1..65535, used once, with a name"
            )
        for name in names:
            if fold_name(name) in seen and seen[fold_name(name)] != value:
                raise DatasetImportError(
                    f"{where}: {name!r} is mapped to labels {seen[fold_name(name)]} and {value}"
                )
            seen[fold_name(name)] = value
        out[value] = names
    if not out:
        raise DatasetImportError(f"{where}: the structure map is empty")
    return dict(sorted(out.items()))


def match_structures(structures: Mapping[int, list[str]], found: Iterable[str]) -> dict[int, list[str]]:
    """Label number -> the ``found`` source structure names matching its names or aliases (may be empty)."""
    found = list(found)
    return {
        value: [f for f in found if fold_name(f) in {fold_name(n) for n in names}]
        for value, names in structures.items()
    }


def combine(masks: Mapping[int, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Merge per-label boolean masks by the overlap rule (smaller structure wins, ties: higher label).

    Args:
        masks: label number -> boolean ``(X, Y, Z)`` mask, all of one shape.

    Returns:
        ``(labels, overlaps)``: the uint8/uint16 label map and ``"a&b"`` -> voxel count for overlapping pairs.
    """
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, dtype=np.uint16 if max(masks) > 255 else np.uint8)
    order = sorted(masks, key=lambda v: (-int(masks[v].sum()), v))  # largest first: smaller ones paint over
    overlaps: dict[str, int] = {}
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            n = int(np.count_nonzero(masks[a] & masks[b]))
            if n:
                overlaps[f"{min(a, b)}&{max(a, b)}"] = n
        out[masks[a]] = a
    return out, overlaps
