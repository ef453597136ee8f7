"""A tqdm progress bar that log lines do not break and that does not fill a log file with redraws."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def shows_progress(enabled: bool, stream: TextIO | None = None) -> bool:
    """Whether a bar is drawn: asked for and ``stream`` (default stderr) is a terminal, not a file or pipe."""
    stream = sys.stderr if stream is None else stream
    return enabled and bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool, **kwargs: Any) -> Iterator[tqdm]:
    """``tqdm(iterable, **kwargs)`` on stderr while the root logger's console lines are written through it
    (``logging_redirect_tqdm``), so an INFO line appears above the bar instead of through it.

    The bar is disabled (no output at all, log lines unchanged) unless ``enabled`` and stderr is a terminal.
    """
    shown = shows_progress(enabled)
    with tqdm(iterable, disable=not shown, **kwargs) as bar, logging_redirect_tqdm() if shown else nullcontext():
        yield bar
