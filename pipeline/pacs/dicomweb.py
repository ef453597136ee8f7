"""A DICOMweb archive through ``dicomweb-client``: QIDO-RS queries, WADO-RS retrieval, STOW-RS storage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from time import sleep
from typing import TypeVar
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydicom.dataset import Dataset

from pipeline.pacs.archive import SeriesRef
from pipeline.pacs.credentials import ENV_PASSWORD, ENV_TOKEN, ENV_USER, Credentials

__all__ = ["DicomWebArchive"]

logger = logging.getLogger(__name__)

_SERIES_FIELDS = ("Modality", "NumberOfSeriesRelatedInstances")
RETRY_WAITS = (1.0, 2.0)  # seconds before the 2nd and 3rd try of a request that timed out or got 429/503/504
CONNECT_TIMEOUT = 10.0  # seconds to open a connection; a refused connection fails at once, without retries
_RETRIABLE = frozenset({429, 503, 504})
T = TypeVar("T")


def _value(record: dict, keyword: str) -> str | int | None:
    """First value of ``keyword`` in a DICOM JSON ``record`` (``None`` when absent or empty)."""
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


def _refused(status: int, credentials: Credentials) -> str:
    """Why a 401/403 happened, naming where the credentials came from (never their values)."""
    if credentials.source == "none":
        return (
            f"no credentials were given (set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}, or pass "
            "--credentials FILE)"
        )
    if status == 401:
        return f"the archive refused the credentials from {credentials.source}"
    return f"the credentials from {credentials.source} are not allowed this request"


class DicomWebArchive:
    """A DICOMweb service at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``).

    Args:
        url: service root; must not carry credentials (``user:password@`` is refused: give them through the
            environment or ``--credentials``, see :mod:`pipeline.pacs.credentials`).
        credentials: HTTP basic or bearer credentials.
        timeout: seconds to wait for an answer (connecting: at most :data:`CONNECT_TIMEOUT`). A timeout or an
            HTTP 429/503/504 is retried twice (:data:`RETRY_WAITS`); a refused connection and other errors are not.

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
        self.credentials, self.timeout = credentials, timeout
        headers = {"Authorization": f"Bearer {credentials.token}"} if credentials.token else None
        if credentials.username:
            session = create_session_from_user_pass(credentials.username, credentials.password or "")
        else:
            session = create_session()
        # dicomweb-client logs request headers (the Authorization header) at DEBUG level
        logging.getLogger("dicomweb_client").setLevel(
            max(logging.INFO, logging.getLogger("dicomweb_client").level)
        )
        self.client = DICOMwebClient(
            url.rstrip("/"), session=session, headers=headers, timeout=(min(CONNECT_TIMEOUT, timeout), timeout)
        )
        # dicomweb-client's own retries wait 30 s on every failure, a refused connection included: ours instead
        self.client.set_http_retry_params(retry=False)

    def _call(self, what: str, request: Callable[[], T]) -> T:
        """``request()``, retried after a timeout or a 429/503/504; failures as one line naming the service and
        the status, never the request URL (its query may hold a StudyDescription)."""
        waits = iter(RETRY_WAITS)
        while True:
            try:
                return request()
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else None
                wait = next(waits, None) if status in _RETRIABLE else None
                if wait is None:
                    why = f": {_refused(status, self.credentials)}" if status in (401, 403) else ""
                    raise RuntimeError(f"{self.label}: {what} failed with HTTP {status or '?'}{why}") from None
                problem = f"HTTP {status}"
            except requests.Timeout:
                wait = next(waits, None)
                if wait is None:
                    raise TimeoutError(
                        f"{self.label}: {what} timed out ({len(RETRY_WAITS) + 1} tries of {self.timeout:g} s)"
                    ) from None
                problem = "a timeout"
            except requests.ConnectionError:
                raise ConnectionError(f"{self.label}: {what} failed: cannot connect") from None
            logger.warning("%s: %s after %s; retrying in %g s", self.label, what, problem, wait)
            sleep(wait)

    def query_studies(self, filters: dict[str, str]) -> list[str]:
        records = self._call(
            "QIDO-RS study query", lambda: self.client.search_for_studies(search_filters=filters, get_remaining=True)
        )
        return sorted({str(_value(r, "StudyInstanceUID")) for r in records})

    def query_series(self, study_uid: str | None, filters: dict[str, str]) -> list[SeriesRef]:
        records = self._call(
            "QIDO-RS series query",
            lambda: self.client.search_for_series(
                study_uid, fields=_SERIES_FIELDS, search_filters=filters, get_remaining=True
            ),
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
        records = self._call(
            "QIDO-RS instance query",
            lambda: self.client.search_for_instances(ref.study_uid, ref.series_uid, get_remaining=True),
        )
        return sorted({str(_value(r, "SOPInstanceUID")) for r in records})

    def retrieve(
        self, ref: SeriesRef, sop_uids: Sequence[str] | None, sink: Callable[[Dataset], None]
    ) -> None:
        if sop_uids is None:

            def whole() -> None:  # instances are written by name: a retried retrieval rewrites the same files
                for ds in self.client.iter_series(ref.study_uid, ref.series_uid):
                    sink(ds)

            self._call("WADO-RS retrieval", whole)
            return
        for uid in sop_uids:
            one = self._call(
                "WADO-RS retrieval", lambda u=uid: self.client.retrieve_instance(ref.study_uid, ref.series_uid, u)
            )
            sink(one)

    def store(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(p) for p in paths]
        response = self._call("STOW-RS", lambda: self.client.store_instances(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({int(item.get("FailureReason", 0)) for item in failed})
            raise RuntimeError(
                f"{self.label} refused {len(failed)} of {len(paths)} objects (failure reasons {reasons})"
            )
