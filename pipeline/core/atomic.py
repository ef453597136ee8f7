"""Atomic bytes/text/JSON writes and per-case completion markers, so a killed batch run never leaves a
half-written output that a rerun takes as finished.

Every writer goes through :func:`transforms.io.atomic.atomic_write` (the one atomic write: hidden temporary
file in the destination folder, fsync, ``os.replace``). A case folder is complete only when ``.complete.json``
exists, is written last, and every output it lists still has the recorded size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transforms.io.atomic import atomic_write

__all__ = [
    "COMPLETE_MARKER",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "clear_complete",
    "is_complete",
    "mark_complete",
]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete.json"
_MARKER_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (newlines written as given); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (strict: no NaN) and write it to ``path`` atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def _check_name(case_dir: Path, name: str) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"output name must be a relative path inside {str(case_dir)!r}, got {name!r}")
    return case_dir / rel


def mark_complete(
    case_dir: str | os.PathLike,
    outputs: Iterable[str],
    *,
    info: Mapping[str, Any] | None = None,
    warnings: Iterable[str] = (),
) -> Path:
    """Write ``case_dir/.complete.json`` recording each output's size; call it after the last output.

    Args:
        case_dir: the case's output folder.
        outputs: file names relative to ``case_dir`` (e.g. ``["seg.nii.gz", "volumes.csv"]``), all existing.
        info: optional JSON-serialisable facts that a rerun must match to reuse the outputs
            (e.g. ``{"bundle": "spleen_ct", "version": "0.2.0"}``); see :func:`is_complete`.
        warnings: the case's warnings, kept so a rerun that skips the case still reports them.

    Returns:
        The marker's path.

    Raises:
        FileNotFoundError: an output is missing.
    """
    case_dir = Path(case_dir)
    sizes: dict[str, int] = {}
    for name in outputs:
        file = _check_name(case_dir, name)
        if not file.is_file():
            raise FileNotFoundError(f"mark_complete: output {name!r} does not exist in {str(case_dir)!r}")
        sizes[name] = file.stat().st_size
    record = {
        "version": _MARKER_VERSION,
        "outputs": sizes,
        "info": dict(info or {}),
        "warnings": list(warnings),
    }
    return atomic_write_json(case_dir / COMPLETE_MARKER, record)


def clear_complete(case_dir: str | os.PathLike) -> None:
    """Remove the completion marker; call it BEFORE rewriting any output of a case."""
    (Path(case_dir) / COMPLETE_MARKER).unlink(missing_ok=True)


def is_complete(
    case_dir: str | os.PathLike, expected_names: Iterable[str], *, info: Mapping[str, Any] | None = None
) -> bool:
    """True only if the marker exists and lists every expected output, each present with the recorded size.

    Args:
        case_dir: the case's output folder.
        expected_names: outputs a finished case must have (relative to ``case_dir``).
        info: when given, the marker's ``info`` must equal it (a different model means not complete).
    """
    case_dir = Path(case_dir)
    marker = case_dir / COMPLETE_MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        sizes = record["outputs"]
        recorded_info = record.get("info", {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        if marker.exists():
            logger.warning("ignoring unreadable completion marker %s (%s)", marker, type(err).__name__)
        return False
    if info is not None and recorded_info != json.loads(json.dumps(dict(info))):
        return False
    for name in expected_names:
        file = _check_name(case_dir, name)
        if name not in sizes or not file.is_file() or file.stat().st_size != sizes[name]:
            return False
    return True
