"""What a layout reader hands to the importer: cases with named channel paths, label names, skips and notes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESERVED_KEYS = ("case", "label")
_MR_NAMES = re.compile(r"^(mr|mri|t1.*|t2.*|flair.*|adc|dwi.*|pd.*|swi|dce.*|bold|perfusion)$")


class DatasetImportError(ValueError):
    """A source that cannot be imported as a whole (bad layout, unreadable dataset.json, bad option)."""


def safe_name(raw: str) -> str:
    """A case id usable in file names: characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(raw)).lstrip(".") or "case"


def channel_name(raw: str) -> str:
    """A datalist key for a channel called ``raw``: ``"T1 Gd"`` -> ``"t1_gd"`` (lower case, ``[a-z0-9_]``)."""
    name = re.sub(r"[^a-z0-9]+", "_", str(raw).strip().lower()).strip("_")
    return name or "channel"


def unique_channel_names(raw: list[str]) -> list[str]:
    """:func:`channel_name` of each, made unique (``_2``, ``_3`` ...) and kept off ``case`` and ``label``, and
    off ``image`` (the reference channel's alias) unless first."""
    out: list[str] = []
    for index, item in enumerate(raw):
        base = channel_name(item)
        base = f"{base}_image" if base in RESERVED_KEYS else base
        base = "image_2" if base == "image" and index else base
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def modality_of(raw: str) -> str:
    """DICOM-style modality of a channel named ``raw``: ``CT``, ``MR`` (MR sequence names) or ``OT`` (other)."""
    name = channel_name(raw)
    if name == "ct":
        return "CT"
    return "MR" if _MR_NAMES.match(name) else "OT"


@dataclass
class Case:
    """One labelled (or unlabelled) case.

    Attributes:
        case: the case (patient) id, unique in the dataset.
        channels: channel name -> absolute path (NIfTI file or DICOM series folder), in channel order.
        label: absolute path of the label file, ``None`` for an unlabelled case.
        extra: more entry fields (e.g. ``missing_labels``) written to the datalist entry.
        converted: files written for this case (absolute paths).
        details: per-case report fields (structures found, volumes, notes).
    """

    case: str
    channels: dict[str, str]
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A case left out, and why (named so the user can fix it)."""

    case: str
    reason: str


@dataclass
class LayoutResult:
    """A layout reader's result.

    Attributes:
        layout: ``msd``, ``nnunet``, ``dicom`` or ``nifti``.
        source: the source folder.
        channels: channel name -> modality (``CT``, ``MR``, ``OT``), in channel order.
        labels: label value -> name, 0 = background.
        cases: labelled cases taken.
        unlabelled: cases without labels (e.g. MSD ``test``, nnU-Net ``imagesTs``).
        skipped: cases left out with their reason.
        missing: case -> names of mapped structures that case lacks (taken or skipped).
        regions: nnU-Net region labels, region name -> label values (``None`` when not region-based).
        notes: dataset-level remarks for the report.
        splits_file: nnU-Net's ``splits_final.json`` for this dataset, when found: its folds replace the seeded split.
    """

    layout: str
    source: Path
    channels: dict[str, str]
    labels: dict[int, str]
    cases: list[Case] = field(default_factory=list)
    unlabelled: list[Case] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    regions: dict[str, list[int]] | None = None
    notes: list[str] = field(default_factory=list)
    splits_file: Path | None = None
