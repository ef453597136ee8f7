"""What every archive offers the batch (query, list, retrieve, store) and the selection of series to segment.

``--input`` specs: ``dicomweb:http://host:8042/dicom-web`` or ``dimse:AET@host:port``
(:func:`pipeline.pacs.connect.open_archive`). A selection names studies and/or series by UID (also from a file) or queries by
modality, study date range and study description; SEG, RTSTRUCT and other non-image series are never selected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

__all__ = ["NON_IMAGE_MODALITIES", "Archive", "Selection", "SeriesRef", "find_series", "read_uid_file"]

NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE_RANGE = re.compile(r"^(\d{8})?-?(\d{8})?$")


@dataclass(frozen=True, order=True)
class SeriesRef:
    """One series in an archive; ``instances`` is the count the archive reported (``None``: unknown)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    instances: int | None = None


@dataclass(frozen=True)
class Selection:
    """Which series to segment.

    Attributes:
        studies: StudyInstanceUIDs (every image series of each).
        series: SeriesInstanceUIDs.
        modality: only series of this modality (e.g. ``CT``).
        study_date: ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``-YYYYMMDD`` or ``YYYYMMDD-`` (DICOM range matching).
        study_description: a StudyDescription query (``*`` wildcards as in DICOM); never logged.
    """

    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    modality: str | None = None
    study_date: str | None = None
    study_description: str | None = None

    def __post_init__(self) -> None:
        bad = [u for u in (*self.studies, *self.series) if not _UID.match(u) or len(u) > 64]
        if bad:
            raise ValueError(f"not DICOM UIDs (digits and dots, at most 64 characters): {bad[:3]}")
        if self.study_date is not None and (not _DATE_RANGE.match(self.study_date) or self.study_date == "-"):
            raise ValueError(
                f"--study-date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD, got {self.study_date!r}"
            )
        if not (self.studies or self.series or self.modality or self.study_date or self.study_description):
            raise ValueError(
                "select what to segment: --study, --series, --uid-file, or a query (--modality, --study-date, "
                "--study-description); the whole archive is never retrieved by default"
            )

    def study_filters(self) -> dict[str, str]:
        """QIDO / C-FIND study-level matching keys."""
        filters = {"StudyDate": self.study_date, "StudyDescription": self.study_description}
        return {k: v for k, v in filters.items() if v}


class Archive(Protocol):
    """A DICOM archive reached over DICOMweb or DIMSE; ``label`` names it in logs and ledgers (no secrets)."""

    label: str

    def query_studies(self, filters: dict[str, str]) -> list[str]:
        """StudyInstanceUIDs matching study-level ``filters``."""

    def query_series(self, study_uid: str | None, filters: dict[str, str]) -> list[SeriesRef]:
        """Series of ``study_uid`` (all studies when ``None``) matching series-level ``filters``."""

    def list_instances(self, ref: SeriesRef) -> list[str]:
        """SOPInstanceUIDs of the series."""

    def retrieve(
        self, ref: SeriesRef, sop_uids: Sequence[str] | None, sink: Callable[[Dataset], None]
    ) -> None:
        """Hand every instance of the series (only ``sop_uids`` when given) to ``sink``."""

    def store(self, paths: Sequence[Path]) -> None:
        """Store the DICOM files; raise when the archive refuses one."""


def read_uid_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Studies and series from a file: per line a StudyInstanceUID, or ``STUDY_UID SERIES_UID`` for one series
    (blank lines and ``#`` comments skipped). Returns ``(studies, series)``."""
    studies, series = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if len(fields) == 1:
            studies.append(fields[0])
        elif len(fields) == 2:
            series.append(fields[1])
        elif fields:
            raise ValueError(
                f"{path}:{number}: expected STUDY_UID or STUDY_UID SERIES_UID, got {len(fields)} fields"
            )
    return studies, series


def find_series(archive: Archive, selection: Selection) -> list[SeriesRef]:
    """The selected image series, sorted and without duplicates."""
    series_filters = {"Modality": selection.modality} if selection.modality else {}
    study_filters = selection.study_filters()
    named = bool(selection.studies or selection.series)
    queried = set(archive.query_studies(study_filters)) if study_filters or not named else None
    studies = list(selection.studies) if named else sorted(queried or ())
    found: list[SeriesRef] = []
    for uid in selection.series:
        found += archive.query_series(None, {**series_filters, "SeriesInstanceUID": uid})
    for study in studies:
        if queried is None or study in queried:
            found += archive.query_series(study, series_filters)
    if queried is not None:  # series named by UID still have to match the study query
        found = [r for r in found if r.study_uid in queried]
    keep = {r.series_uid: r for r in found if r.modality.upper() not in NON_IMAGE_MODALITIES}
    return sorted(keep.values())
