"""Checks and header reading shared by the DICOM writers of derived objects (SEG, RTSTRUCT).

Both writers take an integer label map ``(X, Y, Z)`` on the grid of the source images (``mask[i, j, k]`` is
column ``i``, row ``j`` of slice ``k``), a label id -> name mapping and the source files; the rules for those
inputs live here once.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

__all__ = ["check_ascending", "check_labels", "check_slice_grid", "package_version", "read_source_headers"]

POSITION_TOL_MM = 1e-3
"""Least step (mm) between consecutive source slices along the normal for them to count as ascending."""


def package_version() -> str:
    """The installed clinseg version (SoftwareVersions of written objects), ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("clinseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_source_headers(source_files: Sequence[str | os.PathLike]) -> list[Dataset]:
    """Read the headers (no pixel data) of ``source_files``, in order.

    An empty SpecificCharacterSet (seen in real data) means the default repertoire and is dropped, since
    highdicom rejects ``''`` and copying it would write an invalid value.
    """
    headers = []
    for f in source_files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        headers.append(ds)
    return headers


def check_labels(labels: Mapping[int, str], arr: np.ndarray) -> list[int]:
    """Check the declared labels and that every label of ``arr`` is among them.

    Args:
        labels: label id (1..255; 0 is background) -> distinct non-empty name of at most 64 characters.
        arr: integer label map ``(X, Y, Z)``.

    Returns:
        The declared ids, ascending.

    Raises:
        ValueError: no labels, a bad id or name, repeated names, or labels in ``arr`` that are not declared.
    """
    ids = sorted(labels)
    if not ids:
        raise ValueError("labels must declare at least one foreground label, got an empty mapping")
    for lid in ids:
        if int(lid) != lid or not 1 <= lid <= 255:
            raise ValueError(
                f"labels keys must be positive integer ids 1..255 (0 is background), got {lid!r}"
            )
        name = labels[lid]
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise ValueError(f"labels[{lid}] must be a non-empty name of at most 64 characters, got {name!r}")
    names = [labels[i] for i in ids]
    if len(set(names)) != len(names):
        raise ValueError(f"labels must have distinct names, got {names}")
    ids = [int(i) for i in ids]
    undeclared = sorted({int(v) for v in np.unique(arr) if v != 0} - set(ids))
    if undeclared:
        raise ValueError(f"mask holds labels {undeclared} that are not declared in labels {ids}")
    return ids


def check_slice_grid(
    headers: Sequence[Dataset], shape: tuple[int, int, int], *, per_slice: bool = True
) -> None:
    """Check that the source images match the mask's ``(X=columns, Y=rows)`` size, and, when ``per_slice``,
    that there is one image per mask slice ``Z``.

    Raises:
        ValueError: the number of source files or an image's size does not match ``shape``.
    """
    nx, ny, nz = shape
    if per_slice and len(headers) != nz:
        raise ValueError(
            f"source_files must hold one file per slice: mask has Z={nz}, got {len(headers)} files"
        )
    for idx, ds in enumerate(headers):
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise ValueError(
                f"source_files[{idx}] is {ds.Columns}x{ds.Rows} (columns x rows) but the mask slice is "
                f"{nx}x{ny}: mask must be (X=columns, Y=rows, Z=slices)"
            )


def check_ascending(positions: np.ndarray, what: str) -> None:
    """Check that slice ``positions`` ``(Z,)`` (mm along the normal ``cross(row_dir, col_dir)``) ascend.

    Args:
        positions: each slice's position along the slice normal, in mask slice order (mm).
        what: the argument that set the order, for the message (``"source_files"``, ``"frame_numbers"``).

    Raises:
        ValueError: two consecutive slices are less than :data:`POSITION_TOL_MM` apart or in descending order.
    """
    if np.any(np.diff(positions) <= POSITION_TOL_MM):
        raise ValueError(
            f"{what} must be sorted ascending along the slice normal cross(row_dir, col_dir); "
            f"positions along it are {np.round(positions, 3).tolist()} mm"
        )
