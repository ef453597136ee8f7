"""Plain NIfTI folders, two shapes:

- paired folders: ``images/`` (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``), files matched by name;
- one folder per case holding its channel files and one label file.

In a case folder the label is the file whose name matches a label pattern (default ``label*``, ``*_label*``,
``seg*``, ``*_seg*``, ``gt*``; case-insensitive globs on the name without ``.nii[.gz]``) and every other NIfTI
file is a channel named after its file name, unless channels are given as ``name[:MODALITY]=glob`` patterns
(``label=glob`` among them names the label file: ``"flair:MR=Flair_*;t1c:MR=T1c_*;label=OTMultiClass*"``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.datasets.model import (
    Case,
    DatasetImportError,
    LayoutResult,
    Skipped,
    channel_name,
    modality_of,
    unique_channel_names,
)
from pipeline.datasets.nifti_files import header_shape, is_nifti, stem

DEFAULT_LABEL_PATTERNS = ("label*", "*_label*", "seg*", "*_seg*", "gt*")
_PAIRS = (("imagesTr", "labelsTr"), ("images", "labels"))


def parse_channels(spec: str) -> dict[str, tuple[str, str]]:
    """``"flair:MR=Flair_*;t1c=T1c_*"`` -> channel name -> (modality, glob), in the given order."""
    out: dict[str, tuple[str, str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, glob = part.partition("=")
        name, _, modality = key.partition(":")
        if not sep or not name.strip() or not glob.strip():
            raise DatasetImportError(f"--channels: expected NAME[:MODALITY]=GLOB, got {part!r}")
        out[channel_name(name)] = ((modality.strip().upper() or modality_of(name)), glob.strip())
    return out


def _matches(path: Path, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatch(stem(path).lower(), p.lower()) for p in patterns)


def _paired(src: Path, images: Path, labels: Path, result: LayoutResult) -> None:
    name = next(iter(result.channels))
    label_files = {stem(p): p for p in labels.iterdir() if is_nifti(p)}
    for image in sorted(p for p in images.iterdir() if is_nifti(p)):
        case = stem(image)
        label = label_files.get(case)
        if label is None:
            result.skipped.append(Skipped(case, f"no label file named {case}.nii[.gz] in {labels}"))
        elif header_shape(label)[:3] != header_shape(image)[:3]:
            result.skipped.append(
                Skipped(case, f"label shape {header_shape(label)} differs from the image's")
            )
        else:
            result.cases.append(Case(case, {name: str(image.resolve())}, str(label.resolve())))


def _case_folder(
    folder: Path, channels: dict[str, tuple[str, str]] | None, label_patterns: tuple[str, ...]
) -> Case:
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    labels = [p for p in files if _matches(p, label_patterns)]
    if len(labels) != 1:
        raise ValueError(
            f"{len(labels)} files match the label patterns {list(label_patterns)}; need exactly one"
        )
    others = [p for p in files if p != labels[0]]
    if channels is None:
        found = dict(zip(unique_channel_names([stem(p) for p in others]), others))
    else:
        found = {}
        for name, (_, glob) in channels.items():
            hits = [p for p in others if _matches(p, [glob])]
            if len(hits) != 1:
                raise ValueError(f"channel {name!r}: {len(hits)} files match {glob!r}; need exactly one")
            found[name] = hits[0]
    if not found:
        raise ValueError("no image file beside the label")
    shapes = {header_shape(p)[:3] for p in [*found.values(), labels[0]]}
    if len(shapes) != 1:
        raise ValueError(f"channel and label shapes differ: {sorted(shapes)}")
    return Case(folder.name, {n: str(p.resolve()) for n, p in found.items()}, str(labels[0].resolve()))


def _check_values(result: LayoutResult, names: Mapping[int, str] | None) -> None:
    """Read every label file's values: skip cases with values outside ``names``; without ``names`` label the
    values found ``label_<value>`` and say so in the notes."""
    values: dict[str, set[int]] = {}
    for item in result.cases:
        data = np.asanyarray(nib.load(item.label).dataobj)
        values[item.case] = {int(v) for v in np.unique(data)} | (
            {-1} if np.any(data != np.round(data)) else set()
        )
    if names is None:
        found = sorted(set().union(*values.values()) - {0, -1}) if values else []
        result.labels = {0: "background", **{v: f"label_{v}" for v in found}}
        result.notes.append(
            f"label values {found} found in the label files, unnamed (name them with structures)"
        )
    else:
        result.labels = {0: "background", **dict(names)}
    keep = []
    for item in result.cases:
        extra = sorted(values[item.case] - set(result.labels))
        if extra:
            result.skipped.append(
                Skipped(item.case, f"label values {extra} are not declared labels (-1: non-integer)")
            )
        else:
            keep.append(item)
    result.cases = keep


def read_nifti_folder(
    src: Path,
    *,
    channels: str | None = None,
    labels: Mapping[int, str] | None = None,
    label_patterns: tuple[str, ...] = DEFAULT_LABEL_PATTERNS,
) -> LayoutResult:
    """Read a plain NIfTI folder (see the module docstring); every label file's values are checked.

    Args:
        src: the folder.
        channels: ``name[:MODALITY]=glob;...`` channel patterns, ``label=glob`` for the label file (default: one
            channel ``image`` for paired folders; channels named after the files for case folders).
        labels: label value -> name (default: the values found, named ``label_<value>``).
        label_patterns: globs naming the label file in a case folder.
    """
    spec = parse_channels(channels) if channels else None
    if spec and "label" in spec:
        label_patterns = (spec.pop("label")[1],)
        spec = spec or None
    for images, label_dir in _PAIRS:
        if (src / images).is_dir() and (src / label_dir).is_dir():
            name, (modality, _) = next(iter(spec.items())) if spec else ("image", ("OT", ""))
            result = LayoutResult("nifti", src, {name: modality}, {0: "background"})
            _paired(src, src / images, src / label_dir, result)
            _check_values(result, labels)
            return result
    result = LayoutResult("nifti", src, {n: m for n, (m, _) in (spec or {}).items()}, {0: "background"})
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            item = _case_folder(folder, spec, label_patterns)
        except ValueError as err:
            result.skipped.append(Skipped(folder.name, str(err)))
            continue
        if not result.channels:
            result.channels = {n: modality_of(n) for n in item.channels}
        if list(item.channels) != list(result.channels):
            result.skipped.append(
                Skipped(folder.name, f"channels {list(item.channels)} differ from {list(result.channels)}")
            )
            continue
        result.cases.append(item)
    _check_values(result, labels)
    return result
