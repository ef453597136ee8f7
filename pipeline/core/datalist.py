"""Datalists: MSD-style ``dataset.json`` files resolved to absolute, checked paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH_KEYS = ("image", "label", "mr", "ct", "ct_dicom")
"""Keys resolved as paths in every datalist; a datalist's own ``channels`` names are resolved too."""


class DatalistError(ValueError):
    """A datalist that cannot be used: missing file, unknown split, missing key."""


def read_datalist(path: str | Path) -> dict[str, Any]:
    """Parse a datalist JSON file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatalistError(f"datalist {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatalistError(f"datalist {path} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise DatalistError(f"datalist {path} must hold a JSON object with split lists, got {type(content).__name__}")
    return content


def path_keys(content: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a datalist's entries that hold paths: :data:`PATH_KEYS` plus its declared ``channels``."""
    channels = content.get("channels")
    declared = tuple(str(k) for k in channels) if isinstance(channels, dict) else ()
    return PATH_KEYS + tuple(k for k in declared if k not in PATH_KEYS)


def load_datalist(
    path: str | Path, split: str = "training", *, required_keys: tuple[str, ...] = ("image",), check_files: bool = True
) -> list[dict[str, Any]]:
    """Entries of one split of a datalist, paths made absolute relative to the datalist's folder.

    Paths are the values of :data:`PATH_KEYS` and of the channel names the file declares in ``channels``
    (``{"flair": "MR", "t1c": "MR"}``, as ``clinseg import`` writes).

    Args:
        path: the ``dataset.json`` file.
        split: ``training``, ``validation`` or ``test`` (any list-valued key of the file).
        required_keys: keys every entry must have (``label`` for training).
        check_files: raise when a referenced file or folder does not exist.

    Returns:
        A list of dicts such as ``{"case": "case_000", "image": "/abs/ct.nii.gz", "label": "/abs/label.nii.gz"}``.
    """
    path = Path(path)
    content = read_datalist(path)
    if not isinstance(content.get(split), list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise DatalistError(f"datalist {path} has no split {split!r}; splits found: {lists}")
    root = path.parent.resolve()
    keys = path_keys(content)
    entries = []
    for index, raw in enumerate(content[split]):
        entry = {"image": raw} if isinstance(raw, str) else dict(raw)
        missing = [k for k in required_keys if k not in entry]
        if missing:
            case = entry.get("case", f"entry {index}")
            raise DatalistError(f"datalist {path}: case {case!r} of {split!r} lacks key(s) {missing}")
        for key in keys:
            if key in entry and isinstance(entry[key], str):
                resolved = (root / entry[key]).resolve()
                if check_files and not resolved.exists():
                    raise DatalistError(f"datalist {path}: {split}[{index}][{key!r}] -> {resolved} does not exist")
                entry[key] = str(resolved)
        entry.setdefault("case", Path(entry["image"]).name.split(".")[0] if "image" in entry else f"{split}_{index}")
        entries.append(entry)
    return entries
