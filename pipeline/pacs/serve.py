"""``clinseg serve``: a DICOM Storage SCP that segments each received series once it is complete and pushes
the results.

Spool layout (survives restarts)::

    SPOOL/incoming/<case key>/<hash>.dcm   every received instance, written atomically on receipt
    SPOOL/journal.jsonl                    one line per processed series (and per push retry); never processed twice

A series is complete when no instance arrived for ``quiet_seconds`` (file times, so a restarted node picks up
where it stopped). Results land in ``OUTPUT/<case key>/`` with a cumulative ``report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from pipeline.batch.discovery import Case
from pipeline.batch.runner import BatchOptions, predict_folder
from pipeline.inference.predictor import Predictor
from pipeline.pacs.archive import Archive
from pipeline.pacs.cache import case_key, write_instance
from pipeline.pacs.dimse import IMAGE_STORAGE, storage_handler
from pipeline.pacs.push import push_case, result_names

__all__ = ["ServeOptions", "StorageNode"]

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the node listens.

    Attributes:
        ae_title: this node's AE title.
        host: interface to listen on (``0.0.0.0``: all).
        port: DICOM port.
        quiet_seconds: a series is complete when no instance arrived for this long.
        poll_seconds: how often complete series are looked for.
    """

    ae_title: str = "CLINSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    quiet_seconds: float = 10.0
    poll_seconds: float = 1.0


class StorageNode:
    """Receives series into ``spool``, segments each complete one into ``output``, pushes to ``push_to``.

    Args:
        predictor: a single-input bundle's predictor.
        spool: folder of received instances and the journal.
        output: results folder (as for :func:`~pipeline.batch.runner.predict_folder`).
        push_to: archive the ``seg.dcm`` (and ``rtstruct.dcm``) go to; ``None``: keep them local.
        options: listening options.
        batch: output options etc. of the segmentation.
    """

    def __init__(
        self, predictor: Predictor, spool: str | Path, output: str | Path, *, push_to: Archive | None = None,
        options: ServeOptions | None = None, batch: BatchOptions | None = None,
    ) -> None:  # fmt: skip
        if len(predictor.input_keys) != 1:
            raise ValueError(
                f"clinseg serve feeds one image series; the bundle needs {list(predictor.input_keys)}"
            )
        self.predictor, self.push_to = predictor, push_to
        self.options, self.batch = options or ServeOptions(), batch or BatchOptions()
        self.incoming, self.output = Path(spool) / "incoming", Path(output)
        self.journal_path = Path(spool) / JOURNAL
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.output.mkdir(parents=True, exist_ok=True)
        self.rejected: list[BaseException] = []
        self._stop = threading.Event()
        self._server = None
        self._lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._done = self.journal()  # this node is the journal's only writer: kept in memory after this read

    # receiving
    def _receive(self, ds: Dataset) -> None:
        series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if not series_uid or not sop_uid:
            raise ValueError("instance without SeriesInstanceUID or SOPInstanceUID")
        key = case_key(series_uid)
        folder = self.incoming / key
        folder.mkdir(exist_ok=True)
        write_instance(ds, folder)
        if key in self._done:
            logger.warning(
                "series %s was already processed; a late instance is kept but not processed again", key
            )

    def start(self) -> None:
        """Start listening (in background threads)."""
        ae = AE(ae_title=self.options.ae_title)
        for uid in IMAGE_STORAGE:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)

        def reject(ds: Dataset) -> None:
            try:
                self._receive(ds)
            except Exception as e:
                logger.warning("refused an instance: %s", e)
                raise

        handler = storage_handler(reject, self.rejected)
        self._server = ae.start_server(
            (self.options.host, self.options.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)]
        )
        logger.info("listening as %s on %s:%d", self.options.ae_title, self.options.host, self.options.port)

    def stop(self) -> None:
        """Stop listening and processing (safe to call twice, from any thread)."""
        self._stop.set()
        with self._server_lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def serve_forever(self) -> None:
        """Listen and process complete series until :meth:`stop` (or Ctrl-C)."""
        self.start()
        try:
            while not self._stop.wait(self.options.poll_seconds):
                self.process_ready()
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            self.stop()

    # processing
    def journal(self) -> dict[str, dict]:
        """The last journal record of each processed series."""
        records: dict[str, dict] = {}
        try:
            lines = self.journal_path.read_text().splitlines()
        except FileNotFoundError:
            return records
        for line in lines:
            try:
                record = json.loads(line)
                records[record["case"]] = record
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: skipped an unreadable journal line", self.journal_path)
        return records

    def _append(self, record: dict) -> None:
        with self.journal_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._done[record["case"]] = record

    def ready(self, now: float | None = None) -> list[str]:
        """Series not processed yet whose last instance arrived at least ``quiet_seconds`` ago."""
        now = time.time() if now is None else now
        keys = []
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir() and p.name not in self._done):
            times = [p.stat().st_mtime for p in folder.iterdir() if p.suffix == ".dcm"]
            if times and now - max(times) >= self.options.quiet_seconds:
                keys.append(folder.name)
        return keys

    def process_ready(self, now: float | None = None) -> list[str]:
        """Segment (and push) every complete series; the keys processed."""
        with self._lock:
            keys = self.ready(now)
            if keys:
                self._process(keys)
            return keys

    def _process(self, keys: list[str]) -> None:
        done = dict(self._done)
        key_name = next(iter(self.predictor.input_keys))
        cases = [Case(k, {key_name: str(self.incoming / k)}, "dicom") for k in keys]
        for k, record in done.items():  # keeps report.json cumulative; finished cases are only skipped
            if record["status"] == "ok":
                cases.append(Case(k, {key_name: str(self.incoming / k)}, "dicom"))
            else:
                cases.append(Case(k, {}, "missing", record.get("error") or "failed earlier"))
        report = predict_folder(self.predictor, cases, self.output, options=self.batch)
        results = {r.case: r for r in report.results}
        retry = [k for k, r in done.items() if r["status"] == "ok" and r.get("push") == "failed"]
        for key in keys + retry:
            result = results[key]
            record = {
                "case": key,
                "status": "ok" if result.status != "failed" else "failed",
                "error": result.error,
            }
            if self.push_to is not None and record["status"] == "ok":
                pushed = push_case(self.output / key, self.push_to, result_names(self.batch.outputs))
                record.update(push=pushed.status, push_error=pushed.error)
            self._append(record)
            logger.info(
                "series %s: %s%s",
                key,
                record["status"],
                f", push {record['push']}" if "push" in record else "",
            )
