"""Fast DICOM pixel reading: raw bytes for uncompressed little-endian data, pydicom decoders otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from transforms.dicom.discovery import PIXEL_DATA_TAG, DicomFile
from transforms.io.errors import ScanLoadError

__all__ = ["check_decoder", "default_workers", "read_planes"]

logger = logging.getLogger(__name__)

_RAW_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
_INT_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}


def default_workers() -> int:
    """Threads used to read and decode files: the CPU count, between 2 and 8."""
    return max(2, min(8, os.cpu_count() or 2))


def _package_for(ts_uid: UID) -> str:
    """The pip package that decodes ``ts_uid`` through pylibjpeg."""
    name = ts_uid.name
    if "JPEG 2000" in name or "HTJ2K" in name:
        return "pylibjpeg pylibjpeg-openjpeg"
    if "JPEG-LS" in name:
        return "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)"
    if "JPEG" in name:
        return "pylibjpeg pylibjpeg-libjpeg"
    if "RLE" in name:
        return "pylibjpeg pylibjpeg-rle"
    return "pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"


def check_decoder(ts_uid: UID, source: str) -> None:
    """Raise when pixel data of transfer syntax ``ts_uid`` cannot be decoded with the installed packages.

    Raises:
        ScanLoadError: naming ``source``, the transfer syntax and the packages to install.
    """
    ts_uid = UID(str(ts_uid))
    if ts_uid in _RAW_SYNTAXES:
        return
    try:
        decoder = get_decoder(ts_uid)
    except NotImplementedError as err:
        raise ScanLoadError(
            f"{source}: no pixel data decoder exists for transfer syntax {ts_uid.name} ({ts_uid})."
        ) from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "none listed"
        raise ScanLoadError(
            f"{source}: no installed decoder for transfer syntax {ts_uid.name} ({ts_uid}); "
            f"`pip install {_package_for(ts_uid)}` (pydicom's other options: {missing})."
        )


def _raw_dtype(item: DicomFile) -> np.dtype | None:
    """Stored-value dtype when the fast raw path applies to ``item``, else ``None``."""
    hdr = item.header
    if (
        item.pixel_tag != PIXEL_DATA_TAG
        or hdr.file_meta.get("TransferSyntaxUID") not in _RAW_SYNTAXES
        or int(hdr.get("SamplesPerPixel", 1)) != 1
    ):
        return None
    key = (int(hdr.get("BitsAllocated", 0)), int(hdr.get("PixelRepresentation", 0)))
    return np.dtype(_INT_DTYPES[key]) if key in _INT_DTYPES else None


def _read_raw(item: DicomFile, dtype: np.dtype, n_values: int) -> np.ndarray | None:
    """Stored values read straight from the file after the pixel data tag; ``None`` if the element is unusual
    (undefined length).

    Raises:
        ScanLoadError: the element or the file is shorter than the image needs (truncated file).
    """
    explicit = item.header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    with open(item.path, "rb") as fp:
        fp.seek(item.pixel_offset)
        head = fp.read(12 if explicit else 8)
        if head[:4] != b"\xe0\x7f\x10\x00":
            return None
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        needed = n_values * dtype.itemsize
        if length == 0xFFFFFFFF:
            return None
        if length < needed:
            raise ScanLoadError(
                f"{item.path}: pixel data holds {length} bytes but Rows x Columns x frames needs {needed}."
            )
        data = fp.read(needed)
    if len(data) < needed:
        raise ScanLoadError(
            f"{item.path}: pixel data truncated: the file ends after {len(data)} of {needed} bytes."
        )
    return np.frombuffer(data, dtype=dtype)


def _stored_values(item: DicomFile, shape: tuple[int, int, int]) -> np.ndarray:
    """``(frames, rows, cols)`` stored values of one file (before rescale)."""
    hdr = item.header
    dtype = _raw_dtype(item)
    arr = None
    if dtype is not None:
        arr = _read_raw(item, dtype, int(np.prod(shape)))
        if arr is not None:
            arr = arr.reshape(shape)
            bits_stored, bits_alloc = int(hdr.get("BitsStored", dtype.itemsize * 8)), dtype.itemsize * 8
            if hdr.get("PixelRepresentation", 0) == 1 and bits_stored < bits_alloc:
                shift = bits_alloc - bits_stored
                arr = np.left_shift(arr, shift) >> shift
    if arr is None:
        try:
            arr = pydicom.dcmread(item.path).pixel_array
        except Exception as err:  # decoders raise many types; re-raise with the file and syntax named
            ts = UID(str(hdr.file_meta.get("TransferSyntaxUID", "")))
            raise ScanLoadError(f"{item.path}: cannot decode pixel data ({ts.name}): {err}") from err
        arr = arr.reshape(shape)
    return arr


def read_planes(
    items: Sequence[DicomFile],
    out: np.ndarray,
    slopes: np.ndarray,
    intercepts: np.ndarray,
    frame_index: Sequence[tuple[int, int]],
    *,
    workers: int | None = None,
) -> None:
    """Fill ``out`` ``(Z, rows, cols)`` with rescaled values (``stored * slope + intercept``) in slice order.

    Args:
        items: the files.
        out: float buffer ``(Z, rows, cols)`` written in place.
        slopes, intercepts: ``(Z,)`` RescaleSlope / RescaleIntercept per output plane.
        frame_index: for each output plane ``z``, ``(file index, frame index)``.
        workers: reading/decoding threads (default :func:`default_workers`).
    """
    _, rows, cols = out.shape
    planes_of: dict[int, list[tuple[int, int]]] = {}
    for z, (f, frame) in enumerate(frame_index):
        planes_of.setdefault(f, []).append((z, frame))

    def _one(f: int) -> None:
        item = items[f]
        frames = int(item.header.get("NumberOfFrames", 1) or 1)
        stored = _stored_values(item, (frames, rows, cols))
        for z, frame in planes_of[f]:
            if slopes[z] == 1.0:
                np.add(stored[frame], out.dtype.type(intercepts[z]), out=out[z], casting="unsafe")
            else:
                np.multiply(stored[frame], out.dtype.type(slopes[z]), out=out[z], casting="unsafe")
                out[z] += out.dtype.type(intercepts[z])

    n_workers = workers or default_workers()
    if n_workers <= 1 or len(planes_of) == 1:
        for f in planes_of:
            _one(f)
        return
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        list(pool.map(_one, planes_of))
