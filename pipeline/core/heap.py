"""Freed heap memory handed back to the operating system between the stages of a case.

glibc keeps freed blocks below its mmap threshold (which it raises up to 32 MB as large blocks are freed) in the
process heap, so after a sliding window or a resampling the resident size stays hundreds of MB above what is in
use (measured: 811 -> 684 MB after building a Predictor, ``benchmarks/RESULTS.md``). ``malloc_trim`` returns it; no
library wraps it, hence these lines. Elsewhere (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["return_freed_memory"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; a few ms)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
