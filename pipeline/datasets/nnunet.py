"""nnU-Net v2 raw layout: ``dataset.json`` (``channel_names``, ``labels`` name -> value or region list,
``file_ending``), ``imagesTr/<case>_<XXXX><ending>`` channel files, ``labelsTr/<case><ending>``, ``imagesTs/``.

Region labels (``"whole tumor": [1, 2, 3]``) are kept as ``regions``; each label value is named after the
smallest region holding it (nnU-Net's ``regions_class_order`` semantics), so ``labels`` still names every value.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any

from pipeline.core.datalist import read_datalist
from pipeline.datasets.model import (
    Case,
    DatasetImportError,
    LayoutResult,
    Skipped,
    modality_of,
    unique_channel_names,
)
from pipeline.datasets.nifti_files import NIFTI_ENDINGS, header_shape


def _labels(raw: Any, path: Path) -> tuple[dict[int, str], dict[str, list[int]] | None]:
    """``labels`` of nnU-Net (name -> value or list of values) as value -> name, plus regions when any."""
    if not isinstance(raw, dict) or not raw:
        raise DatasetImportError(f"{path}: 'labels' must map names to label values, got {raw!r}")
    try:
        sets = {str(k): sorted({int(x) for x in (v if isinstance(v, list) else [v])}) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise DatasetImportError(f"{path}: 'labels' values must be integers or lists of integers") from err
    if not any(isinstance(v, list) for v in raw.values()):
        return {values[0]: name for name, values in sorted(sets.items(), key=lambda kv: kv[1])}, None
    labels: dict[int, str] = {}
    for value in sorted({x for values in sets.values() for x in values}):
        holders = [name for name, values in sets.items() if value in values]
        labels[value] = min(holders, key=lambda name: len(sets[name]))
    regions = {name: values for name, values in sets.items() if values != [0]}
    return labels, regions


def _channels(raw: Any, path: Path) -> tuple[list[str], dict[str, str]]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetImportError(f"{path}: 'channel_names' must map channel indices to names, got {raw!r}")
    ordered = [str(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]
    names = unique_channel_names(ordered)
    return names, {n: modality_of(r) for n, r in zip(names, ordered)}


def _case(folder: Path, case: str, names: list[str], ending: str) -> Case:
    files = {n: folder / f"{case}_{c:04d}{ending}" for c, n in enumerate(names)}
    absent = [p.name for p in files.values() if not p.is_file()]
    if absent:
        raise ValueError(f"channel file(s) {absent} missing in {folder}")
    return Case(case, {n: str(p.resolve()) for n, p in files.items()})


def _case_ids(folder: Path, ending: str, suffix_len: int) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        {
            p.name[: -len(ending) - suffix_len]
            for p in folder.iterdir()
            if p.name.endswith(ending) and not p.name.startswith(".")
        }
    )


SPLITS_NAME = "splits_final.json"


def find_splits_file(src: Path) -> Path | None:
    """nnU-Net's ``splits_final.json`` of the dataset ``src``: beside its ``dataset.json``, else in
    ``$nnUNet_preprocessed/<dataset folder name>/`` (where ``nnUNetv2_plan_and_preprocess`` writes it)."""
    candidates = [src / SPLITS_NAME]
    if os.environ.get("nnUNet_preprocessed"):
        candidates.append(Path(os.environ["nnUNet_preprocessed"]) / src.name / SPLITS_NAME)
    return next((p for p in candidates if p.is_file()), None)


def read_nnunet(src: Path) -> LayoutResult:
    """Read an nnU-Net v2 raw dataset folder (images referenced in place), noting its ``splits_final.json``.

    Raises:
        DatasetImportError: no or a bad ``dataset.json``, or a ``file_ending`` other than NIfTI.
    """
    path = src / "dataset.json"
    content = read_datalist(path)
    ending = str(content.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_ENDINGS:
        raise DatasetImportError(
            f"{path}: file_ending {ending!r} is not NIfTI; convert the images to .nii.gz first (e.g. SimpleITK)"
        )
    names, channels = _channels(content.get("channel_names"), path)
    labels, regions = _labels(content.get("labels"), path)
    result = LayoutResult("nnunet", src, channels, labels, regions=regions, splits_file=find_splits_file(src))
    labelled = _case_ids(src / "labelsTr", ending, 0)
    for case in _case_ids(src / "imagesTr", ending, 5):
        if case not in labelled:
            result.skipped.append(Skipped(case, f"no label file labelsTr/{case}{ending}"))
    for case in labelled:
        label = src / "labelsTr" / f"{case}{ending}"
        try:
            item = _case(src / "imagesTr", case, names, ending)
            shapes = {header_shape(Path(p))[:3] for p in item.channels.values()} | {header_shape(label)[:3]}
            if len(shapes) != 1:
                raise ValueError(f"channel and label shapes differ: {sorted(shapes)}")
        except ValueError as err:
            result.skipped.append(Skipped(case, str(err)))
            continue
        item.label = str(label.resolve())
        result.cases.append(item)
    for case in _case_ids(src / "imagesTs", ending, 5):
        try:
            result.unlabelled.append(_case(src / "imagesTs", case, names, ending))
        except ValueError as err:
            result.skipped.append(Skipped(case, f"unlabelled: {err}"))
    declared = content.get("numTraining")
    if isinstance(declared, int) and declared != len(labelled):
        result.notes.append(
            f"dataset.json declares numTraining={declared}, labelsTr holds {len(labelled)} cases"
        )
    return result
