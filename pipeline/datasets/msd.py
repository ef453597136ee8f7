"""Medical Segmentation Decathlon layout: ``dataset.json`` (``modality``, ``labels``, ``training``, ``test``),
``imagesTr/``, ``labelsTr/``, ``imagesTs/``; 4D multi-channel images are split into one file per channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.datalist import read_datalist
from pipeline.datasets.model import (
    Case,
    DatasetImportError,
    LayoutResult,
    Skipped,
    modality_of,
    safe_name,
    unique_channel_names,
)
from pipeline.datasets.nifti_files import header_shape, split_channels, stem


def _labels(content: dict[str, Any], path: Path) -> dict[int, str]:
    raw = content.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetImportError(f"{path}: 'labels' must map label values to names, got {raw!r}")
    try:
        return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}
    except ValueError as err:
        raise DatasetImportError(f"{path}: 'labels' keys must be integers, got {sorted(raw)}") from err


def _channels(content: dict[str, Any], path: Path) -> tuple[list[str], dict[str, str]]:
    raw = content.get("modality")
    if not isinstance(raw, dict) or not raw:
        raise DatasetImportError(f"{path}: 'modality' must map channel indices to names, got {raw!r}")
    ordered = [str(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]
    names = unique_channel_names(ordered)
    return names, {n: modality_of(r) for n, r in zip(names, ordered)}


def _image_channels(
    image: Path, names: list[str], dest: Path, case: str, converted: list[str]
) -> tuple[dict[str, str], tuple[int, ...]]:
    """Channel paths of one MSD image (a 3D file, or a 4D file split under ``dest/images``) and its 3D shape."""
    shape = header_shape(image)
    if len(shape) == 3 and len(names) == 1:
        return {names[0]: str(image)}, shape
    if len(shape) != 4 or shape[3] != len(names):
        raise ValueError(f"image shape {shape} does not hold the {len(names)} channel(s) of 'modality'")
    written = split_channels(image, names, dest / "images", case)
    converted.extend(str(p) for p in written.values())
    return {n: str(p) for n, p in written.items()}, shape[:3]


def read_msd(src: Path, dest: Path) -> LayoutResult:
    """Read an MSD task folder; 4D images are split into ``dest/images/<case>_<channel>.nii.gz``.

    Raises:
        DatasetImportError: no or a bad ``dataset.json``.
    """
    path = src / "dataset.json"
    content = read_datalist(path)
    names, channels = _channels(content, path)
    result = LayoutResult("msd", src, channels, _labels(content, path))
    training = content.get("training")
    if not isinstance(training, list):
        raise DatasetImportError(f"{path}: 'training' must be a list of {{image, label}} entries")
    for index, raw in enumerate(training):
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("image"), str)
            or not isinstance(raw.get("label"), str)
        ):
            result.skipped.append(Skipped(f"training[{index}]", "entry lacks 'image' or 'label' paths"))
            continue
        image, label = (src / raw["image"]).resolve(), (src / raw["label"]).resolve()
        case = safe_name(stem(image))
        try:
            for f in (image, label):
                if not f.is_file():
                    raise ValueError(f"{f} does not exist")
            item = Case(case, {}, str(label))
            item.channels, shape = _image_channels(image, names, dest, case, item.converted)
            if header_shape(label)[:3] != shape:
                raise ValueError(f"label shape {header_shape(label)} differs from the image's {shape}")
        except ValueError as err:
            result.skipped.append(Skipped(case, str(err)))
            continue
        result.cases.append(item)
    for raw in content.get("test", []) or []:
        image = (src / (raw if isinstance(raw, str) else raw.get("image", ""))).resolve()
        case = safe_name(stem(image))
        try:
            if not image.is_file():
                raise ValueError(f"{image} does not exist")
            item = Case(case, {})
            item.channels, _ = _image_channels(image, names, dest, case, item.converted)
        except ValueError as err:
            result.skipped.append(Skipped(case, f"unlabelled: {err}"))
            continue
        result.unlabelled.append(item)
    return result
