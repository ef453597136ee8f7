"""Find DICOM image series in a folder from headers only, and choose one series by UID or by rule."""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import MediaStorageDirectoryStorage

from transforms.io.errors import ScanLoadError

__all__ = [
    "DicomFile", "SeriesInfo", "SeriesRule", "check_image_types", "discover_series", "image_type", "read_header",
    "select_series", "walk_files",
]

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO", "REG", "DOC", "PLAN"}
)
PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_TAGS = (PIXEL_DATA_TAG, 0x7FE00008, 0x7FE00009)
_MAX_NAMED = 10


@dataclass
class DicomFile:
    """One DICOM file read up to (not including) its pixel data.

    Attributes:
        path: the file.
        header: the dataset without pixel data (``stop_before_pixels``).
        pixel_offset: byte offset of the pixel data element's tag in the file, ``-1`` when there is none.
        pixel_tag: that element's tag (Pixel Data, Float Pixel Data or Double Float Pixel Data), 0 when none.
    """

    path: Path
    header: Dataset
    pixel_offset: int
    pixel_tag: int = 0


@dataclass
class SeriesInfo:
    """The files of one SeriesInstanceUID (unsorted) and a summary used for selection and error messages."""

    uid: str
    modality: str
    description: str
    files: list[DicomFile] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    """Files that belong (or may belong) to the series but cannot be read: ``"<path>: <cause>"`` each."""

    @property
    def n_slices(self) -> int:
        """Number of image planes: files, or frames for one enhanced multi-frame file."""
        return sum(int(f.header.get("NumberOfFrames", 1) or 1) for f in self.files)

    def summary(self) -> str:
        """``uid (modality, N slices)`` for messages (no free-text header fields such as SeriesDescription)."""
        return f"{self.uid} ({self.modality or 'no modality'}, {self.n_slices} slices)"


@dataclass(frozen=True)
class SeriesRule:
    """How to choose one series among several.

    Attributes:
        modality: keep only series of this Modality (e.g. ``"CT"``); ``None`` keeps all.
        description: regular expression searched (case-insensitive) in SeriesDescription; ``None`` keeps all.
        prefer_most_slices: among several matches take the one with most slices (a tie is still ambiguous);
            ``False`` makes several matches an error.
        image_type: keep only the chosen series' images whose ImageType holds this value (case-insensitive),
            e.g. ``"M"`` (magnitude) of an SWI series storing magnitude and phase under one SeriesInstanceUID;
            ``None`` keeps all.
    """

    modality: str | None = None
    description: str | None = None
    prefer_most_slices: bool = True
    image_type: str | None = None

    def __post_init__(self) -> None:
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as err:
                raise ValueError(
                    f"SeriesRule.description is not a valid regular expression: {self.description!r} ({err})."
                ) from err


def read_header(path: Path) -> DicomFile | None:
    """Read a DICOM Part 10 file's header; ``None`` when the file is not DICOM (no ``DICM`` marker) or unreadable."""
    try:
        with open(path, "rb") as fp:
            preamble = fp.read(132)
            if len(preamble) < 132 or preamble[128:132] != b"DICM":
                return None
            fp.seek(0)
            header = pydicom.dcmread(fp, stop_before_pixels=True)
            offset = fp.tell()
            fp.seek(offset)
            tag = fp.read(4)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        logger.debug("cannot read %s as DICOM: %s", path, err)
        return None
    value = ((tag[0] | tag[1] << 8) << 16 | (tag[2] | tag[3] << 8)) if len(tag) == 4 else 0
    if value not in _PIXEL_TAGS:
        return DicomFile(Path(path), header, -1, 0)
    return DicomFile(Path(path), header, offset, value)


def _broken_reason(path: Path) -> str | None:
    """Why a file that :func:`read_header` rejected still looks like part of a series (``None``: not DICOM).

    A file with the ``DICM`` marker, or named ``*.dcm``, that cannot be read is a damaged slice, not a stray file.
    """
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError as err:
        return f"cannot be opened ({err.strerror or type(err).__name__})"
    if head[128:132] == b"DICM":
        return "has the DICOM marker but its header cannot be parsed (truncated or corrupt file)"
    if path.suffix.lower() == ".dcm":
        return f"named .dcm but is not a DICOM file ({len(head) if len(head) < 132 else 'over 131'} bytes, no DICM marker)"
    return None


def walk_files(folder: Path) -> list[Path]:
    """The files under ``folder`` at any depth whose names are not hidden, following symbolic links to folders
    (each real folder once, so a link cycle ends), sorted."""
    seen: set[str] = set()
    out = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out += [Path(root) / name for name in names if not name.startswith(".")]
    return sorted(out)


def _candidate_files(folder: Path) -> list[Path]:
    return [p for p in walk_files(folder) if p.is_file() and p.name.upper() != "DICOMDIR"]


def image_type(item: DicomFile) -> str:
    """A file's ImageType values joined by backslashes (``ORIGINAL\\PRIMARY\\M\\ND``); ``""`` when absent."""
    value = item.header.get("ImageType", "")
    return "\\".join(str(v) for v in value) if not isinstance(value, str) else value


_MAGNITUDE = ("M", "MAGNITUDE")


def check_image_types(files: list[DicomFile], positions: list[float], label: str) -> None:
    """Refuse a series whose slice positions (mm along the normal, one per file) repeat across images of
    different ImageType (SWI magnitude and phase under one SeriesInstanceUID, say), naming the types and how to
    keep one.

    Raises:
        ScanLoadError: several ImageType values and a repeated position.
    """
    types = [image_type(f) for f in files]
    if len(set(types)) < 2 or len({round(p, 3) for p in positions}) == len(positions):
        return
    counts = {t: types.count(t) for t in sorted(set(types))}
    listed = ", ".join(f"{t or '(none)'} ({n} images)" for t, n in counts.items())
    magnitude = [t for t in counts if set(t.upper().split("\\")) & set(_MAGNITUDE)]
    hint = (
        f"; the magnitude images ({magnitude[0]}) are likely the image: keep them with "
        "series_rule={'image_type': 'M'} (SeriesRule(image_type='M'))"
        if len(magnitude) == 1
        else "; keep one type with series_rule={'image_type': VALUE} (SeriesRule(image_type=VALUE))"
    )
    raise ScanLoadError(
        f"series {label}: images of {len(counts)} ImageType values share slice positions: {listed}{hint}."
    )


def _with_image_type(series: SeriesInfo, wanted: str | None, source: Path) -> SeriesInfo:
    """``series`` with only the files whose ImageType holds ``wanted`` (``None``: unchanged)."""
    if wanted is None:
        return series
    keep = [f for f in series.files if wanted.upper() in image_type(f).upper().split("\\")]
    if not keep:
        found = sorted({image_type(f) for f in series.files})
        raise ScanLoadError(f"{source}: no image of series {series.summary()} has ImageType {wanted!r}; found {found}.")
    return replace(series, files=keep)


def discover_series(folder: Path) -> list[SeriesInfo]:
    """Group the DICOM image files under ``folder`` (recursive) by SeriesInstanceUID, reading headers only.

    Files that are not DICOM (no ``DICM`` marker, not named ``*.dcm``) are skipped with one warning naming them
    (NIfTI files silently: they are images, found by NIfTI discovery);
    DICOMDIR files, hidden files and non-image objects (SEG, RTSTRUCT, SR, ...) are skipped. Files that look like
    part of a series but cannot be used are recorded in :attr:`SeriesInfo.broken` so loading the series fails
    naming them (never a silently shorter volume): an image file of the series without pixel data (truncated),
    and DICOM-marked or ``*.dcm`` files that cannot be parsed (their series is unknown, so every series of the
    folder records them).

    Args:
        folder: a folder holding DICOM files at any depth, with any file names.

    Returns:
        One :class:`SeriesInfo` per series, sorted by UID.

    Raises:
        ScanLoadError: ``folder`` is not a folder, or it holds damaged DICOM files and no readable series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanLoadError(f"{folder}: not a folder.")
    skipped: list[Path] = []
    orphans: list[str] = []
    no_pixels: dict[str, list[str]] = defaultdict(list)
    groups: dict[str, SeriesInfo] = {}
    counts: dict[str, int] = defaultdict(int)
    for path in _candidate_files(folder):
        item = read_header(path)
        if item is None:
            reason = _broken_reason(path)
            if reason is not None:
                orphans.append(f"{path} {reason}")
            elif not path.name.lower().endswith((".nii", ".nii.gz")):  # NIfTI files are images, not strays
                skipped.append(path)
            continue
        hdr = item.header
        modality = str(hdr.get("Modality", ""))
        if hdr.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
            continue
        if modality in NON_IMAGE_MODALITIES:
            counts[modality] += 1
            continue
        if "SeriesInstanceUID" not in hdr:
            orphans.append(f"{path} has no SeriesInstanceUID (truncated or corrupt header)")
            continue
        uid = str(hdr.SeriesInstanceUID)
        if item.pixel_offset < 0:
            no_pixels[uid].append(f"{path} has no pixel data (truncated file?)")
            continue
        if uid not in groups:
            groups[uid] = SeriesInfo(uid, modality, str(hdr.get("SeriesDescription", "")))
        groups[uid].files.append(item)
    if skipped:
        named = ", ".join(str(p.relative_to(folder)) for p in skipped[:_MAX_NAMED])
        more = f" and {len(skipped) - _MAX_NAMED} more" if len(skipped) > _MAX_NAMED else ""
        logger.warning("%s: skipped %d file(s) that are not DICOM: %s%s", folder, len(skipped), named, more)
    for uid, problems in no_pixels.items():
        if uid in groups:
            groups[uid].broken.extend(problems)
        else:
            counts["no pixel data"] += len(problems)
    for series in groups.values():
        series.broken.extend(orphans)
    if orphans and not groups:
        more = f" and {len(orphans) - _MAX_NAMED} more" if len(orphans) > _MAX_NAMED else ""
        raise ScanLoadError(
            f"{folder}: no readable DICOM image series; damaged file(s): {'; '.join(orphans[:_MAX_NAMED])}{more}."
        )
    for kind, n in counts.items():
        logger.info("%s: ignored %d non-image DICOM object(s) (%s)", folder, n, kind)
    return [groups[uid] for uid in sorted(groups)]


def _listing(series: list[SeriesInfo]) -> str:
    return "; ".join(s.summary() for s in series)


def select_series(
    series: list[SeriesInfo], source: Path, *, series_uid: str | None = None, rule: SeriesRule | None = None
) -> SeriesInfo:
    """Choose one series by explicit UID, else by ``rule`` (default :class:`SeriesRule`).

    Args:
        series: the series found in ``source`` (:func:`discover_series`).
        source: the folder, for messages.
        series_uid: SeriesInstanceUID to load; overrides ``rule``.
        rule: modality / description / most-slices rule, and the ImageType kept of the chosen series.

    Raises:
        ScanLoadError: no series, the UID is absent, nothing matches the rule, or the choice is ambiguous;
            the message lists the series found (uid, modality, description, slice count).
    """
    if not series:
        raise ScanLoadError(f"{source}: no DICOM image series found.")
    if series_uid is not None:
        hits = [s for s in series if s.uid == series_uid]
        if not hits:
            raise ScanLoadError(
                f"{source}: series_uid {series_uid!r} not found; series found: {_listing(series)}."
            )
        return _with_image_type(hits[0], rule.image_type if rule else None, source)
    rule = rule or SeriesRule()
    hits = [
        s
        for s in series
        if (rule.modality is None or s.modality.upper() == rule.modality.upper())
        and (rule.description is None or re.search(rule.description, s.description, re.IGNORECASE))
    ]
    if not hits:
        raise ScanLoadError(f"{source}: no series matches {rule}; series found: {_listing(series)}.")
    if len(hits) == 1:
        return _with_image_type(hits[0], rule.image_type, source)
    most = max(s.n_slices for s in hits)
    top = [s for s in hits if s.n_slices == most]
    if rule.prefer_most_slices and len(top) == 1:
        logger.info(
            "%s: chose series %s, the one with most slices among %d matches",
            source,
            top[0].summary(),
            len(hits),
        )
        return _with_image_type(top[0], rule.image_type, source)
    raise ScanLoadError(
        f"{source}: ambiguous choice, {len(hits)} series match {rule}; pass series_uid or a narrower rule. "
        f"Series found: {_listing(hits)}."
    )
