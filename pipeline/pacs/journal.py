"""The listening node's journal: ``SPOOL/journal.jsonl``, one JSON line per outcome of a series (``ok``,
``provisional``, ``failed``, ``incomplete``, ``stale``) and per push retry; the last line of a series is its state.

Appended with an fsync per line, so a killed node loses at most the line it was writing; an unreadable line (a
torn last write) is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["JOURNAL", "read_journal", "append_journal"]

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"


def read_journal(path: Path) -> dict[str, dict]:
    """The last record of each series (by its ``case`` key); empty when there is no journal yet."""
    records: dict[str, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
            records[record["case"]] = record
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: skipped an unreadable journal line", path)
    return records


def append_journal(path: Path, record: dict) -> None:
    """Append ``record`` as one line, flushed to disk before returning."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
