"""Progress bars: drawn only on a terminal, with log lines written above the bar rather than through it."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline.core.progress import progress_bar, shows_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("enabled", "stream", "expected"),
    [(True, _Terminal(), True), (True, io.StringIO(), False), (False, _Terminal(), False)],
)
def test_bar_only_when_asked_and_on_a_terminal(enabled, stream, expected):
    assert shows_progress(enabled, stream) is expected


def _run(monkeypatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    with progress_bar(range(3), enabled=True, unit="case", mininterval=0) as bar:
        for i in bar:
            logging.getLogger("pipeline.test").info("case_%03d done", i)
    return stream.getvalue()


def test_log_file_gets_log_lines_and_no_redraws(monkeypatch):
    text = _run(monkeypatch, io.StringIO())
    assert text.splitlines() == [f"INFO case_{i:03d} done" for i in range(3)]
    assert "\r" not in text and "case/s" not in text


def test_on_a_terminal_each_log_line_is_whole(monkeypatch):
    text = _run(monkeypatch, _Terminal())
    lines = [line for chunk in text.split("\r") for line in chunk.split("\n")]
    assert [line for line in lines if "done" in line] == [f"INFO case_{i:03d} done" for i in range(3)]
    assert "3/3" in text  # the bar was drawn
