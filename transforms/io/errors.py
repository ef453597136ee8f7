"""The one error type raised for scans that cannot be loaded (public name: ``transforms.io.scan.ScanLoadError``)."""

from __future__ import annotations

__all__ = ["ScanLoadError"]


class ScanLoadError(ValueError):
    """A scan path, folder, series or file cannot be loaded; the message names the path and the problem."""
