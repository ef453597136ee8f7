"""A DIMSE archive through ``pynetdicom``: C-FIND queries, C-GET or C-MOVE retrieval, C-STORE storage.

C-MOVE needs the archive to know this node (``calling_aet`` at this host and ``move_port``); C-GET needs
nothing on the archive's side beyond accepting the calling AE title.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pipeline.pacs.archive import SeriesRef

__all__ = ["IMAGE_STORAGE", "DimseArchive", "storage_handler"]

logger = logging.getLogger(__name__)

# image storage classes this node accepts (C-GET sub-operations, C-MOVE and clinseg serve)
IMAGE_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)
_ADDRESS = re.compile(r"^(?P<aet>[^@\\]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
_PENDING = (0xFF00, 0xFF01)
CONNECT_TIMEOUT = 10.0


def storage_handler(sink: Callable[[Dataset], None], errors: list[BaseException]) -> Callable:
    """An ``EVT_C_STORE`` handler handing each received dataset (with its file meta) to ``sink``; a failure is
    kept in ``errors`` and answered with status 0xC211 (the sender is told, the node keeps running)."""

    def handle(event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sink(ds)
        except Exception as e:  # noqa: BLE001 - a bad object must not stop the association
            errors.append(e)
            return 0xC211
        return 0x0000

    return handle


class DimseArchive:
    """The DICOM node ``aet`` at ``host:port``.

    Args:
        aet, host, port: the archive's AE title and address.
        calling_aet: this node's AE title (the archive must accept it; for C-MOVE it must know its address).
        retrieve: ``"get"`` (C-GET on the same association) or ``"move"`` (C-MOVE to a Storage SCP this object
            starts on ``move_port`` for the transfer).
        move_port: local port of the C-MOVE destination.
        timeout: seconds for association, DIMSE and network timeouts (opening the TCP connection: at most
            :data:`CONNECT_TIMEOUT`; a refused connection fails at once).
    """

    def __init__(
        self, aet: str, host: str, port: int, *, calling_aet: str = "CLINSEG", retrieve: str = "get",
        move_port: int | None = None, timeout: float = 60.0,
    ) -> None:  # fmt: skip
        if retrieve not in ("get", "move"):
            raise ValueError(f"retrieve must be 'get' or 'move', got {retrieve!r}")
        if retrieve == "move" and not move_port:
            raise ValueError("C-MOVE needs move_port: the local port the archive sends the instances to")
        if not 0 < len(calling_aet) <= 16:
            raise ValueError(f"calling AE title must be 1-16 characters, got {len(calling_aet)}")
        self.aet, self.host, self.port = aet, host, int(port)
        self.calling_aet, self.retrieve_mode, self.move_port, self.timeout = (
            calling_aet,
            retrieve,
            move_port,
            timeout,
        )
        self.label = f"dimse:{aet}@{host}:{port}"

    @classmethod
    def parse(cls, address: str, **kwargs) -> DimseArchive:
        """From ``AET@host:port``."""
        match = _ADDRESS.match(address)
        if not match:
            raise ValueError(f"DIMSE address must be AET@host:port, got {address!r}")
        return cls(match["aet"], match["host"], int(match["port"]), **kwargs)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(CONNECT_TIMEOUT, self.timeout)
        return ae

    @contextmanager
    def _association(self, ae: AE, **kwargs) -> Iterator[Association]:
        assoc = ae.associate(self.host, self.port, ae_title=self.aet, **kwargs)
        if not assoc.is_established:
            raise ConnectionError(
                f"{self.label}: association refused or failed (calling AE {self.calling_aet})"
            )
        try:
            yield assoc
        finally:
            assoc.release()

    def _find(self, identifier: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found = []
        with self._association(ae) as assoc:
            for status, match in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = int(getattr(status, "Status", -1))
                if code in _PENDING and match is not None:
                    found.append(match)
                elif code != 0x0000:
                    raise RuntimeError(f"{self.label}: C-FIND failed with status 0x{code & 0xFFFF:04X}")
        return found

    def query_studies(self, filters: dict[str, str]) -> list[str]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        for key, value in filters.items():
            setattr(ds, key, value)
        return sorted({str(m.StudyInstanceUID) for m in self._find(ds)})

    def query_series(self, study_uid: str | None, filters: dict[str, str]) -> list[SeriesRef]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid or ""
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.NumberOfSeriesRelatedInstances = ""
        for key, value in filters.items():
            setattr(ds, key, value)
        refs = []
        for m in self._find(ds):
            count = m.get("NumberOfSeriesRelatedInstances")
            refs.append(
                SeriesRef(
                    str(m.StudyInstanceUID),
                    str(m.SeriesInstanceUID),
                    str(m.get("Modality", "")),
                    int(count) if count not in (None, "") else None,
                )
            )
        return refs

    def list_instances(self, ref: SeriesRef) -> list[str]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = ref.study_uid, ref.series_uid, ""
        return sorted({str(m.SOPInstanceUID) for m in self._find(ds)})

    def retrieve(
        self, ref: SeriesRef, sop_uids: Sequence[str] | None, sink: Callable[[Dataset], None]
    ) -> None:
        identifiers = []
        for uid in sop_uids if sop_uids is not None else [None]:
            ds = Dataset()
            ds.QueryRetrieveLevel = "SERIES" if uid is None else "IMAGE"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = ref.study_uid, ref.series_uid
            if uid is not None:
                ds.SOPInstanceUID = uid
            identifiers.append(ds)
        errors: list[BaseException] = []
        handlers = [(evt.EVT_C_STORE, storage_handler(sink, errors))]
        if self.retrieve_mode == "get":
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for uid in IMAGE_STORAGE:
                ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
            roles = [build_role(uid, scp_role=True) for uid in IMAGE_STORAGE]
            with self._association(ae, ext_neg=roles, evt_handlers=handlers) as assoc:
                for ds in identifiers:
                    self._check(
                        assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet), "C-GET", errors
                    )
            return
        ae = self._ae()
        for uid in IMAGE_STORAGE:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        server = ae.start_server(("0.0.0.0", self.move_port), block=False, evt_handlers=handlers)
        try:
            with self._association(ae) as assoc:
                for ds in identifiers:
                    responses = assoc.send_c_move(
                        ds, self.calling_aet, StudyRootQueryRetrieveInformationModelMove
                    )
                    self._check(responses, "C-MOVE", errors)
        finally:
            server.shutdown()

    def _check(self, responses, what: str, errors: list[BaseException]) -> None:
        for status, _ in responses:
            code = int(getattr(status, "Status", -1))
            if code in _PENDING:
                continue
            if errors:
                raise errors[0]
            if code != 0x0000:
                raise RuntimeError(f"{self.label}: {what} ended with status 0x{code & 0xFFFF:04X}")

    def store(self, paths: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(p) for p in paths]
        ae = self._ae()
        for sop_class, syntax in sorted(
            {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
        ):
            ae.add_requested_context(sop_class, [syntax])
        with self._association(ae) as assoc:
            for path, ds in zip(paths, datasets, strict=True):
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1))
                if code != 0x0000:
                    raise RuntimeError(
                        f"{self.label}: C-STORE of {path.name} ended with status 0x{code & 0xFFFF:04X}"
                    )
