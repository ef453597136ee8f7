"""Atomic file and folder writes: the one implementation, for every package of the repository.

It lives in ``transforms`` (a leaf) because transforms writes files too (``transforms.io.inspect``, the NIfTI
writer) and may not import ``pipeline``; ``pipeline.core.atomic`` builds its typed writers and completion
markers on it.

A file is written to a hidden temporary name in the destination folder (``.tmp-<random>-<name>``, keeping the
real suffix chain so format-sniffing writers such as nibabel still see ``.nii.gz``), flushed to disk and
``os.replace``-d over the destination; a folder is filled under a hidden staging name and moved into place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_folder", "atomic_write"]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _staging(path: str | os.PathLike, what: str) -> tuple[Path, Path]:
    path = Path(path)
    if not path.name:
        raise ValueError(f"{what}: path must name a file or folder, got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{what}: folder of {str(path)!r} does not exist")
    return path, path.parent / f".tmp-{secrets.token_hex(6)}-{path.name}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it over ``path`` only if the block succeeds.

    The temporary name is ``.tmp-<hex>-<name>`` in the same folder (same file system, so the final
    ``os.replace`` is atomic), keeping ``name``'s suffixes. On any exception the temporary file is removed and
    ``path`` is left untouched.

    Args:
        path: destination file; its folder must exist.

    Raises:
        FileNotFoundError: the destination folder does not exist, or the block wrote nothing.
    """
    path, tmp = _staging(path, "atomic_write")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"atomic_write: nothing was written to the temporary file for {str(path)!r}"
            )
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; it becomes ``path`` only if the block succeeds.

    A folder already at ``path`` is removed just before the move (a reader sees the old or the new folder,
    or, for that instant, none; never a half-written one). On any exception the staging folder is removed.

    Args:
        path: destination folder (a DICOM series ``ct_dicom/``, an exported bundle); its parent must exist.

    Raises:
        FileNotFoundError: the parent folder does not exist.
    """
    path, tmp = _staging(path, "atomic_folder")
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
