"""A DICOMweb archive through ``dicomweb-client``: QIDO-RS queries, WADO-RS retrieval, STOW-RS storage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.dataset import Dataset

from pipeline.pacs.archive import SeriesRef
from pipeline.pacs.credentials import Credentials

__all__ = ["DicomWebArchive"]

logger = logging.getLogger(__name__)

_SERIES_FIELDS = ("Modality", "NumberOfSeriesRelatedInstances")


def _value(record: dict, keyword: str) -> str | int | None:
    """First value of ``keyword`` in a DICOM JSON ``record`` (``None`` when absent or empty)."""
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


@contextmanager
def _http(label: str, what: str) -> Iterator[None]:
    """HTTP failures as one line naming the service and the status; never the request URL, whose query may hold
    a StudyDescription."""
    try:
        yield
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise RuntimeError(f"{label}: {what} failed with HTTP {status}") from None
    except requests.ConnectionError:
        raise ConnectionError(f"{label}: {what} failed: cannot connect") from None


class DicomWebArchive:
    """A DICOMweb service at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``).

    Args:
        url: service root; must not carry credentials (``user:password@`` is refused: give them through the
            environment or ``--credentials``, see :mod:`pipeline.pacs.credentials`).
        credentials: HTTP basic or bearer credentials.
        timeout: seconds per HTTP request.

    Raises:
        ValueError: not an http(s) URL, or a URL with credentials in it.
    """

    def __init__(self, url: str, *, credentials: Credentials | None = None, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DICOMweb URL must be http(s)://host[:port]/path, got scheme {parts.scheme!r}")
        if parts.username or parts.password:
            raise ValueError(
                "DICOMweb URL must not carry credentials; set CLINSEG_PACS_USER/CLINSEG_PACS_PASSWORD or "
                "CLINSEG_PACS_TOKEN, or pass --credentials FILE"
            )
        port = f":{parts.port}" if parts.port else ""
        self.label = f"dicomweb:{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
        credentials = credentials or Credentials()
        headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else None
        if credentials.username:
            session = create_session_from_user_pass(credentials.username, credentials.password or "")
        else:
            session = create_session()
        # dicomweb-client logs request headers (the Authorization header) at DEBUG level
        logging.getLogger("dicomweb_client").setLevel(
            max(logging.INFO, logging.getLogger("dicomweb_client").level)
        )
        self.client = DICOMwebClient(url.rstrip("/"), session=session, headers=headers, timeout=timeout)

    def query_studies(self, filters: dict[str, str]) -> list[str]:
        with _http(self.label, "QIDO-RS study query"):
            records = self.client.search_for_studies(search_filters=filters, get_remaining=True)
        return sorted({str(_value(r, "StudyInstanceUID")) for r in records})

    def query_series(self, study_uid: str | None, filters: dict[str, str]) -> list[SeriesRef]:
        with _http(self.label, "QIDO-RS series query"):
            records = self.client.search_for_series(
                study_uid, fields=_SERIES_FIELDS, search_filters=filters, get_remaining=True
            )
        refs = []
        for r in records:
            count = _value(r, "NumberOfSeriesRelatedInstances")
            refs.append(
                SeriesRef(
                    str(_value(r, "StudyInstanceUID")),
                    str(_value(r, "SeriesInstanceUID")),
                    str(_value(r, "Modality") or ""),
                    None if count is None else int(count),
                )
            )
        return refs

    def list_instances(self, ref: SeriesRef) -> list[str]:
        with _http(self.label, "QIDO-RS instance query"):
            records = self.client.search_for_instances(ref.study_uid, ref.series_uid, get_remaining=True)
        return sorted({str(_value(r, "SOPInstanceUID")) for r in records})

    def retrieve(
        self, ref: SeriesRef, sop_uids: Sequence[str] | None, sink: Callable[[Dataset], None]
    ) -> None:
        with _http(self.label, "WADO-RS retrieval"):
            if sop_uids is None:
                for ds in self.client.iter_series(ref.study_uid, ref.series_uid):
                    sink(ds)
                return
            for uid in sop_uids:
                sink(self.client.retrieve_instance(ref.study_uid, ref.series_uid, uid))

    def store(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(p) for p in paths]
        with _http(self.label, "STOW-RS"):
            response = self.client.store_instances(datasets)
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({int(item.get("FailureReason", 0)) for item in failed})
            raise RuntimeError(
                f"{self.label} refused {len(failed)} of {len(paths)} objects (failure reasons {reasons})"
            )
