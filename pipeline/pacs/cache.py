"""A local cache of retrieved series: one folder per series named by a hash of its UID, one file per instance,
resumable (instances already on disk are not retrieved again) and verified (instance count and SOP UIDs).

Layout::

    CACHE/s<16 hex>/<24 hex>.dcm     folder: SHA-256 of the SeriesInstanceUID; file: SHA-256 of the SOPInstanceUID
    CACHE/s<16 hex>/.series.json     {"study_uid", "series_uid", "instances": [SOPInstanceUIDs], "complete"}
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pipeline.core.atomic import atomic_write_json
from transforms.io.atomic import atomic_write
from pipeline.pacs.archive import Archive, SeriesRef

__all__ = ["MANIFEST", "SeriesCache", "case_key", "instance_name", "write_instance"]

logger = logging.getLogger(__name__)

MANIFEST = ".series.json"


def case_key(series_uid: str) -> str:
    """The pseudonymous case id of a series: ``s`` + the first 16 hex digits of SHA-256 of its UID."""
    return "s" + hashlib.sha256(series_uid.encode()).hexdigest()[:16]


def instance_name(sop_uid: str) -> str:
    """The file name of an instance: the first 24 hex digits of SHA-256 of its SOPInstanceUID, ``.dcm``."""
    return hashlib.sha256(sop_uid.encode()).hexdigest()[:24] + ".dcm"


def write_instance(ds: Dataset, folder: Path) -> Path:
    """Write ``ds`` atomically as ``folder/<hash of its SOPInstanceUID>.dcm``.

    Raises:
        ValueError: the dataset lacks a SOPInstanceUID or a transfer syntax.
    """
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    meta = getattr(ds, "file_meta", None)
    if not sop_uid or meta is None or "TransferSyntaxUID" not in meta:
        raise ValueError("received an instance without SOPInstanceUID or transfer syntax")
    path = folder / instance_name(sop_uid)
    with atomic_write(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


class SeriesCache:
    """Retrieved series under ``root`` (created if missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, ref: SeriesRef) -> Path:
        return self.root / case_key(ref.series_uid)

    def fetch(self, archive: Archive, ref: SeriesRef) -> Path:
        """The series folder, retrieving the instances not yet cached and verifying all of them.

        Raises:
            ValueError: the archive lists no instances, sends an instance of another series, or the cached
                files do not hold exactly the listed SOP instances.
        """
        folder = self.folder(ref)
        folder.mkdir(exist_ok=True)
        key = folder.name
        expected = self._complete(folder, ref)
        if expected is None:
            expected = archive.list_instances(ref)
            if not expected:
                raise ValueError(f"series {key}: the archive lists no instances")
            missing = [u for u in expected if not (folder / instance_name(u)).is_file()]
            if missing:
                logger.info(
                    "series %s: retrieving %d of %d instances from %s",
                    key,
                    len(missing),
                    len(expected),
                    archive.label,
                )

                def sink(ds: Dataset) -> None:
                    if str(ds.get("SeriesInstanceUID", "")) != ref.series_uid:
                        raise ValueError(f"series {key}: the archive sent an instance of another series")
                    write_instance(ds, folder)

                archive.retrieve(ref, None if len(missing) == len(expected) else missing, sink)
        self._verify(folder, ref, expected)
        atomic_write_json(
            folder / MANIFEST,
            {
                "study_uid": ref.study_uid,
                "series_uid": ref.series_uid,
                "instances": expected,
                "complete": True,
            },
        )
        return folder

    def _complete(self, folder: Path, ref: SeriesRef) -> list[str] | None:
        """The instances of a complete earlier retrieval, when the archive still reports as many."""
        try:
            record = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        instances = record.get("instances") if isinstance(record, dict) and record.get("complete") else None
        if not isinstance(instances, list) or (ref.instances is not None and ref.instances != len(instances)):
            return None
        return [str(u) for u in instances]

    @staticmethod
    def _verify(folder: Path, ref: SeriesRef, expected: list[str]) -> None:
        if ref.instances is not None and ref.instances != len(expected):
            raise ValueError(
                f"series {folder.name}: the archive reports {ref.instances} instances but lists "
                f"{len(expected)}"
            )
        absent, wrong = 0, 0
        for uid in expected:
            path = folder / instance_name(uid)
            if not path.is_file():
                absent += 1
                continue
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SeriesInstanceUID"]
            )
            if str(ds.get("SOPInstanceUID")) != uid or str(ds.get("SeriesInstanceUID")) != ref.series_uid:
                wrong += 1
        if absent or wrong:
            raise ValueError(
                f"series {folder.name}: {len(expected) - absent - wrong} of {len(expected)} instances retrieved and "
                f"verified ({absent} missing, {wrong} with other UIDs)"
            )
