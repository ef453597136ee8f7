"""Open an archive from its ``--input`` / ``--push-url`` spec."""

from __future__ import annotations

from pipeline.pacs.archive import Archive
from pipeline.pacs.credentials import Credentials
from pipeline.pacs.dicomweb import DicomWebArchive
from pipeline.pacs.dimse import DimseArchive

__all__ = ["open_archive"]


def open_archive(
    spec: str, *, credentials: Credentials | None = None, calling_aet: str = "CLINSEG", **kwargs
) -> Archive:
    """The archive named by ``spec`` (``dicomweb:URL`` or ``dimse:AET@host:port``).

    Raises:
        ValueError: an unknown scheme, a URL carrying credentials, or a malformed DIMSE address.
    """
    scheme, sep, rest = spec.partition(":")
    if scheme == "dicomweb" and sep:
        return DicomWebArchive(rest, credentials=credentials)
    if scheme == "dimse" and sep:
        return DimseArchive.parse(rest, calling_aet=calling_aet, **kwargs)
    raise ValueError(f"archive {spec!r}: expected dicomweb:http(s)://host[:port]/path or dimse:AET@host:port")
