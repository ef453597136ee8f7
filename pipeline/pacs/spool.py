"""The listening node's spool: received instances per series, the node's own clock of each series' last
arrival, the associations still sending into it, a size bound and pruning.

Layout::

    SPOOL/incoming/<case key>/<hash>.dcm           a received instance (never rewritten by a duplicate)
    SPOOL/incoming/<case key>/.receiving           an association was sending into the series when the node
                                                   stopped (a crash, an abort): the series waits for a resend
    SPOOL/incoming/<case key>/.processed.json      {"instances": [file names], "safe", "pruned"}: what the
                                                   last result was made from; kept after the files are pruned

Arrival times are ``time.monotonic()`` of this process and persisted nowhere: after a restart every spooled
series counts as having just arrived, so it waits a full quiet period again.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from pipeline.core.atomic import atomic_write_json
from pipeline.pacs.cache import case_key, instance_name, write_instance
from pipeline.pacs.completeness import sender_count

__all__ = ["GIB", "PROCESSED", "RECEIVING", "OutOfResources", "SeriesState", "Spool", "SpoolLimits"]

logger = logging.getLogger(__name__)

RECEIVING = ".receiving"
PROCESSED = ".processed.json"
GIB = 1024**3


class OutOfResources(Exception):
    """The spool is full (answered with DICOM status 0xA700, Refused: Out of Resources)."""


@dataclass(frozen=True)
class SpoolLimits:
    """Bounds of the spool.

    Attributes:
        max_bytes: received instances kept at most (``None``: no bound but the disk's).
        min_free_bytes: free disk space below which nothing more is accepted.
        keep_seconds: processed series whose result is safe are pruned after this long (late instances within
            it reprocess the whole series; after it they need a resend of the whole series).
    """

    max_bytes: int | None = None
    min_free_bytes: int = GIB
    keep_seconds: float = 3600.0


@dataclass
class SeriesState:
    """What the node knows of one spooled series (in memory only)."""

    last: float
    senders: set[int] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)  # senders whose connection closed with no release (yet)
    interrupted: bool = False
    pending: bool = False
    expected: tuple[int, str] | None = None
    processed_at: float | None = None


class Spool:
    """Received series under ``root/incoming``, bounded by ``limits``.

    Args:
        root: the spool folder.
        limits: size bounds and retention.
        clock: seconds of this process (``time.monotonic``).
    """

    def __init__(
        self, root: str | Path, limits: SpoolLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.incoming = Path(root) / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.limits, self.clock = limits or SpoolLimits(), clock
        self.series: dict[str, SeriesState] = {}
        self.bytes = 0
        self._lock = threading.RLock()  # store() may prune while holding it
        now = clock()
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            names = self.names(folder.name)
            self.bytes += sum((folder / n).stat().st_size for n in names)
            processed = self.processed(folder.name)
            self.series[folder.name] = SeriesState(
                last=now,
                interrupted=(folder / RECEIVING).exists(),
                pending=bool(names - set(processed.get("instances", []))),
                processed_at=now if processed else None,
            )

    # receiving
    def store(self, ds: Dataset, sender: int) -> bool:
        """Spool ``ds`` received on association ``sender``; ``False`` for a duplicate (not written again).

        Raises:
            OutOfResources: the spool is at ``max_bytes`` or the disk below ``min_free_bytes``.
            ValueError: no SeriesInstanceUID, SOPInstanceUID or transfer syntax.
        """
        series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if not series_uid or not sop_uid:
            raise ValueError("instance without SeriesInstanceUID or SOPInstanceUID")
        key = case_key(series_uid)
        folder = self.incoming / key
        with self._lock:
            state = self.series.setdefault(key, SeriesState(last=self.clock()))
            state.last = self.clock()
            if (folder / instance_name(sop_uid)).exists():
                return False
            self._check_room()
            folder.mkdir(exist_ok=True)
            if sender not in state.senders:
                state.senders.add(sender)
                (folder / RECEIVING).touch()
            self.bytes += write_instance(ds, folder).stat().st_size
            state.pending = True
            state.expected = sender_count(ds) or state.expected
        return True

    def full(self) -> str | None:
        """Why nothing more can be accepted (``None``: there is room); safe results are pruned first."""
        with self._lock:
            limit = self.limits.max_bytes
            if limit is not None and self.bytes >= limit:
                self.prune(lambda key, s: True)  # results already safe make room first
            if limit is not None and self.bytes >= limit:
                return f"the spool holds {self.bytes / GIB:.3f} GiB, its limit is {limit / GIB:.3f} GiB"
            free = shutil.disk_usage(self.incoming).free
            if free < self.limits.min_free_bytes:
                return (
                    f"{free / GIB:.3f} GiB free on the spool's disk, the floor is "
                    f"{self.limits.min_free_bytes / GIB:.3f}"
                )
            return None

    def _check_room(self) -> None:
        reason = self.full()
        if reason is not None:
            raise OutOfResources(reason)

    def ended(self, sender: int, *, released: bool) -> None:
        """Association ``sender`` ended: ``released`` normally, else aborted or its connection dropped (the
        series it was sending into wait for a resend).

        pynetdicom fires the connection close (from its DUL thread) and the release (from the association's
        thread) in either order: a release that comes after its own connection close still ends the wait.
        """
        with self._lock:
            for key, state in self.series.items():
                if sender in state.senders:
                    state.senders.discard(sender)
                    if released:  # a clean release of a resend ends an interruption
                        state.dropped.clear()
                        state.interrupted = False
                    else:
                        state.dropped.add(sender)
                        state.interrupted = True
                elif released and sender in state.dropped:
                    state.dropped.discard(sender)
                    state.interrupted = bool(state.dropped)
                else:
                    continue
                if not state.senders and not state.interrupted:
                    (self.incoming / key / RECEIVING).unlink(missing_ok=True)

    # bookkeeping
    def names(self, key: str) -> set[str]:
        """The instance files of series ``key``."""
        folder = self.incoming / key
        return {p.name for p in folder.glob("*.dcm")} if folder.is_dir() else set()

    def processed(self, key: str) -> dict:
        """The record of the last result of ``key`` (empty when none)."""
        try:
            return json.loads((self.incoming / key / PROCESSED).read_text())
        except (OSError, ValueError):
            return {}

    def mark_processed(self, key: str, names: set[str], *, safe: bool) -> None:
        """Record that a result was made from ``names``; ``safe``: written and, where asked, pushed."""
        with self._lock:
            atomic_write_json(
                self.incoming / key / PROCESSED, {"instances": sorted(names), "safe": safe, "pruned": False}
            )
            state = self.series[key]
            state.processed_at = self.clock()
            state.pending = bool(self.names(key) - names)

    def mark_safe(self, key: str) -> None:
        """The result of ``key`` is now pushed: its instances may be pruned."""
        with self._lock:
            record = self.processed(key)
            if record and not record["safe"]:
                atomic_write_json(self.incoming / key / PROCESSED, {**record, "safe": True})

    def settle(self, key: str) -> None:
        """Nothing to do for ``key`` until more instances arrive."""
        with self._lock:
            self.series[key].pending = False

    def remove(self, key: str, names: set[str]) -> None:
        """Delete the instance files ``names`` of ``key``."""
        with self._lock:
            for name in names:
                path = self.incoming / key / name
                size = path.stat().st_size if path.exists() else 0
                path.unlink(missing_ok=True)
                self.bytes -= size

    def prune(self, due: Callable[[str, SeriesState], bool] | None = None) -> list[str]:
        """Delete the instances of processed series whose result is safe and that nothing is sending into:
        those ``due`` (default: processed at least ``keep_seconds`` ago). Returns the keys pruned."""
        now = self.clock()
        if due is None:

            def due(key: str, state: SeriesState) -> bool:
                return now - (state.processed_at or now) >= self.limits.keep_seconds

        with self._lock:
            pruned = [k for k, s in self.series.items() if self._prunable(k, s) and due(k, s)]
            for key in pruned:
                record = self.processed(key)
                self.remove(key, self.names(key))
                atomic_write_json(self.incoming / key / PROCESSED, {**record, "pruned": True})
                logger.info("series %s: result safe, %d received instances pruned", key, len(record["instances"]))
        return pruned

    def _prunable(self, key: str, state: SeriesState) -> bool:
        record = self.processed(key)
        return bool(record.get("safe")) and not (record.get("pruned") or state.pending or state.senders)
