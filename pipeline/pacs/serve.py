"""``clinseg serve``: a DICOM Storage SCP that segments each received series once it is complete and pushes
the results.

Spool layout (survives restarts): :mod:`pipeline.pacs.spool`, plus ``SPOOL/journal.jsonl``
(:mod:`pipeline.pacs.journal`).

A series is segmented only when it is complete:

- every association that sent into it was released (an abort, a dropped connection or a node restart while one
  was open leaves it waiting for a resend; after ``incomplete_seconds`` it is journaled ``incomplete``);
- no instance arrived for ``quiet_seconds`` by this process's clock (after a restart: counted from the restart);
- as many instances as the sender (``NumberOfSeriesRelatedInstances`` or ``ImagesInAcquisition``) or the
  ``count_from`` archive's series listing reports, where either does, and no gap in the slice positions.

Where no count is known, nothing can prove the series whole: it is segmented only after a further
``settle_seconds`` of quiet and journaled ``provisional`` (pushed, but marked in the journal and the report);
any later instance supersedes it. A full spool rejects new associations (A-ASSOCIATE-RJ, transient, local limit
exceeded) and answers 0xA700 to the C-STOREs of an association that fills it.

A failed push is tried again on a later poll, 10 s after the first failure and twice as long after each further
one, up to 10 minutes (:mod:`pipeline.pacs.backoff`). New instances of a processed series reprocess the whole
series (a new revision superseding the old, pushed again); if the series' instances were already pruned, the
series is journaled ``stale`` until resent whole.
Results land in ``OUTPUT/<case key>/`` with a cumulative ``report.json``.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from pipeline.batch.discovery import Case
from pipeline.batch.report import error_text
from pipeline.batch.runner import BatchOptions, predict_folder
from pipeline.core.atomic import clear_complete
from pipeline.inference.predictor import Predictor
from pipeline.outputs.registry import pushed_names
from pipeline.pacs.archive import Archive
from pipeline.pacs.backoff import Backoff
from pipeline.pacs.completeness import slice_gaps
from pipeline.pacs.dimse import IMAGE_STORAGE
from pipeline.pacs.journal import JOURNAL, append_journal, read_journal
from pipeline.pacs.push import push_case
from pipeline.pacs.spool import OutOfResources, SeriesState, Spool, SpoolLimits

__all__ = ["ServeOptions", "StorageNode"]

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0xA700, 0xC211
_SAFE_PUSH = ("pushed", "already", "nothing")
RESULTS = ("ok", "provisional")  # journal states of a written result
# A-ASSOCIATE-RJ: rejected-transient, by the presentation service provider, local limit exceeded
REJECT_FULL = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the node listens.

    Attributes:
        ae_title: this node's AE title (the called AE title of every association must be it).
        host: interface to listen on (``0.0.0.0``: all; a non-loopback host needs ``allow_aets``).
        port: DICOM port.
        quiet_seconds: a series may be complete when no instance arrived for this long (this process's clock).
        poll_seconds: how often complete series are looked for.
        allow_aets: calling AE titles accepted (with the ``push_to`` archive's); empty: any, on loopback only.
        incomplete_seconds: a series known to be incomplete is journaled ``incomplete`` after this long quiet.
        settle_seconds: further quiet a series of unknown instance count waits before it is segmented (its
            result is journaled ``provisional``).
    """

    ae_title: str = "CLINSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    quiet_seconds: float = 10.0
    poll_seconds: float = 1.0
    allow_aets: tuple[str, ...] = ()
    incomplete_seconds: float = 600.0
    settle_seconds: float = 60.0


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _peer(event) -> str:
    requestor = event.assoc.requestor
    aet = requestor.primitive.calling_ae_title if requestor.primitive is not None else requestor.ae_title
    return f"{aet!s} at {requestor.address}:{requestor.port}"


class StorageNode:
    """Receives series into ``spool``, segments each complete one into ``output``, pushes to ``push_to``.

    Args:
        predictor: a single-input bundle's predictor.
        spool: folder of received instances and the journal.
        output: results folder (as for :func:`~pipeline.batch.runner.predict_folder`).
        push_to: archive the ``seg.dcm`` (and ``rtstruct.dcm``) go to; ``None``: keep them local.
        count_from: archive whose series listing tells how many instances a series has (``None``: not asked).
        options: listening options.
        limits: spool size bounds and retention.
        batch: output options etc. of the segmentation.
        clock: seconds of this process (``time.monotonic``).

    Raises:
        ValueError: a multi-input bundle, or a non-loopback host without allowed calling AE titles.
    """

    def __init__(
        self, predictor: Predictor, spool: str | Path, output: str | Path, *, push_to: Archive | None = None,
        count_from: Archive | None = None, options: ServeOptions | None = None, limits: SpoolLimits | None = None,
        batch: BatchOptions | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if len(predictor.input_keys) != 1:
            raise ValueError(
                f"clinseg serve feeds one image series; the bundle needs {list(predictor.input_keys)}"
            )
        self.predictor, self.push_to, self.count_from, self.clock = predictor, push_to, count_from, clock
        self.options, self.batch = options or ServeOptions(), batch or BatchOptions()
        push_aet = getattr(push_to, "aet", None)
        self.allowed = tuple(dict.fromkeys([*self.options.allow_aets, *([push_aet] if push_aet else [])]))
        if not self.allowed and not _loopback(self.options.host):
            raise ValueError(
                f"listening on {self.options.host} (not loopback) needs --allow-aet: the calling AE titles "
                "allowed to send"
            )
        self.spool, self.output = Spool(spool, limits, clock), Path(output)
        self.incoming = self.spool.incoming
        self.journal_path = Path(spool) / JOURNAL
        self.output.mkdir(parents=True, exist_ok=True)
        self.rejected: list[BaseException] = []
        self._stop = threading.Event()
        self._server = None
        self._lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._senders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._senders_lock, self._sender_numbers = threading.Lock(), itertools.count()
        self._waiting: dict[str, str] = {}
        self._backoff = Backoff()  # failed pushes: retried after 10 s, then twice as long each time, up to 10 min
        self._gaps: dict[str, tuple[int, str | None]] = {}  # key -> (instances looked at, gap found)
        self._unverified: dict[str, str] = {}  # keys segmented now without a known count -> why
        self._asked: dict[str, tuple[float, tuple[int, str] | None]] = {}  # key -> (when, count_from's answer)
        self._done = self.journal()  # this node is the journal's only writer: kept in memory after this read
        for key, record in self._done.items():  # spools written before .processed.json: their results stand
            if key in self.spool.series and not self.spool.processed(key) and record["status"] in RESULTS:
                self.spool.mark_processed(key, self.spool.names(key), safe=record.get("push") != "failed")

    # receiving
    def _sender(self, assoc) -> int:
        """A number naming ``assoc`` for as long as this node runs (``id()`` is reused once it is freed)."""
        with self._senders_lock:
            if assoc not in self._senders:
                self._senders[assoc] = next(self._sender_numbers)
            return self._senders[assoc]

    def _on_requested(self, event) -> None:
        """``EVT_REQUESTED``: reject a new association while the spool is full (the sender retries later)."""
        reason = self.spool.full()
        if reason is not None:
            logger.warning("rejected an association from %s: out of resources: %s", _peer(event), reason)
            event.assoc.acse.send_reject(*REJECT_FULL)
            event.assoc.kill()  # as pynetdicom's own rejections: waits until the A-ASSOCIATE-RJ is sent

    def _on_store(self, event) -> int:
        """``EVT_C_STORE``: spool the instance; 0xA700 when the spool is full, 0xC211 for a bad instance."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            if not self.spool.store(ds, self._sender(event.assoc)):
                logger.debug("a duplicate instance was not stored again")
        except OutOfResources as e:
            logger.warning("refused an instance from %s: out of resources: %s", _peer(event), e)
            return OUT_OF_RESOURCES
        except Exception as e:  # noqa: BLE001 - a bad object must not stop the association
            logger.warning("refused an instance from %s: %s", _peer(event), e)
            self.rejected.append(e)
            return CANNOT_UNDERSTAND
        return 0x0000

    def start(self) -> None:
        """Start listening (in background threads)."""
        ae = AE(ae_title=self.options.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.allowed)
        for uid in IMAGE_STORAGE:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, lambda e: self.spool.ended(self._sender(e.assoc), released=True)),
            (evt.EVT_ABORTED, lambda e: self.spool.ended(self._sender(e.assoc), released=False)),
            (evt.EVT_CONN_CLOSE, lambda e: self.spool.ended(self._sender(e.assoc), released=False)),
            (evt.EVT_REJECTED, lambda e: logger.warning("rejected an association from %s", _peer(e))),
        ]
        self._server = ae.start_server(
            (self.options.host, self.options.port), block=False, evt_handlers=handlers
        )
        logger.info(
            "listening as %s on %s:%d (calling AE titles: %s)", self.options.ae_title, self.options.host,
            self.options.port, ", ".join(self.allowed) or "any, loopback only",
        )  # fmt: skip

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
                try:
                    self.process_ready()
                except Exception:
                    logger.exception("processing the spool failed; the node keeps listening and retries")
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            self.stop()

    # bookkeeping
    def journal(self) -> dict[str, dict]:
        """The last journal record of each series (:mod:`pipeline.pacs.journal`)."""
        return read_journal(self.journal_path)

    def _append(self, record: dict) -> None:
        append_journal(self.journal_path, record)
        self._done[record["case"]] = record

    def _expected(self, key: str, state: SeriesState) -> tuple[int, str] | None:
        """How many instances the series has and who says so, where the sender or ``count_from`` tells."""
        if state.expected is not None:
            return state.expected
        if self.count_from is None:
            return None
        asked = self._asked.get(key)
        if asked is not None and self.clock() - asked[0] < self.options.quiet_seconds:
            return asked[1]  # the archive is asked at most once per quiet time
        answer = self._ask_count(key)
        self._asked[key] = (self.clock(), answer)
        return answer

    def _ask_count(self, key: str) -> tuple[int, str] | None:
        """The instance count of ``count_from``'s series listing (``None``: not listed or not reachable)."""
        names = sorted(self.spool.names(key))
        uid = pydicom.dcmread(self.incoming / key / names[0], stop_before_pixels=True).SeriesInstanceUID
        try:
            refs = self.count_from.query_series(None, {"SeriesInstanceUID": str(uid)})
        except Exception as e:  # noqa: BLE001 - the count is then unknown; the other checks still hold
            logger.warning("series %s: cannot ask %s for its size: %s", key, self.count_from.label, error_text(e))
            return None
        counts = [r.instances for r in refs if r.instances is not None]
        return (max(counts), f"{self.count_from.label}'s series listing") if counts else None

    def _missing(self, key: str, state: SeriesState, names: set[str]) -> str | None:
        """Why the series is known to be incomplete (``None``: not known to be)."""
        if state.interrupted:
            return (
                f"the association sending it ended without a release (aborted, dropped or the node restarted) "
                f"after {len(names)} instances; waiting for a resend"
            )
        expected = self._expected(key, state)
        if expected is not None and len(names) < expected[0]:
            return f"{len(names)} of {expected[0]} instances received ({expected[1]})"
        if self._gaps.get(key, (None,))[0] != len(names):
            self._gaps[key] = (len(names), slice_gaps(self.incoming / key, names))
        gaps = self._gaps[key][1]
        if gaps is not None:
            return gaps
        if expected is None:
            self._unverified[key] = "no instance count from the sender or an archive; the count is unverified"
        return None

    def _triage(self, key: str) -> bool:
        """Whether ``key`` is to be segmented now; journals ``incomplete``, ``stale`` and drops duplicates."""
        state = self.spool.series[key]
        if not state.pending or state.senders:
            return False
        quiet = self.clock() - state.last
        if quiet < self.options.quiet_seconds:
            return False
        names, record = self.spool.names(key), self.spool.processed(key)
        before = set(record.get("instances", []))
        if record.get("pruned") and names <= before:
            logger.info("series %s: %d duplicate instances dropped", key, len(names))
            self.spool.remove(key, names)
            self.spool.settle(key)
            return False
        if record.get("pruned") and not before <= names:
            self._settle(key, "stale", f"{len(names - before)} late instances arrived after the series' "
                         "instances were pruned; resend the whole series to reprocess it")  # fmt: skip
            return False
        self._unverified.pop(key, None)
        missing = self._missing(key, state, names)
        if missing is None:
            return key not in self._unverified or quiet >= self.options.quiet_seconds + self.options.settle_seconds
        if quiet >= self.options.incomplete_seconds:
            self._settle(key, "incomplete", missing)
        elif self._waiting.get(key) != missing:
            logger.info("series %s waits: %s", key, missing)
            self._waiting[key] = missing
        return False

    def _settle(self, key: str, status: str, error: str) -> None:
        self._append({"case": key, "status": status, "error": error})
        self.spool.settle(key)
        logger.warning("series %s: %s: %s", key, status, error)

    # processing
    def process_ready(self) -> list[str]:
        """Segment (and push) every complete series, retry failed pushes, prune what is safe; the keys segmented."""
        with self._lock:
            keys = [k for k in sorted(self.spool.series) if self._triage(k)]
            now = self.clock()
            retry = [
                k for k, r in self._done.items()
                if r["status"] in RESULTS and r.get("push") == "failed" and self._backoff.due(k, now)
            ]  # fmt: skip
            if keys or retry:
                self._process(keys, [k for k in retry if k not in keys])
            self.spool.prune()
            return keys

    def _process(self, keys: list[str], retry: list[str]) -> None:
        done = dict(self._done)
        snapshot = {k: self.spool.names(k) for k in keys}
        key_name = next(iter(self.predictor.input_keys))
        cases = []
        for k in keys:
            clear_complete(self.output / k)  # a reprocess supersedes the earlier result
            cases.append(Case(k, {key_name: str(self.incoming / k)}, "dicom"))
        for k, record in done.items():  # keeps report.json cumulative; finished cases are only skipped
            if k in keys:
                continue
            if record["status"] in RESULTS:
                cases.append(Case(k, {key_name: str(self.incoming / k)}, "dicom"))
            else:
                cases.append(Case(k, {}, "missing", f"{record['status']}: {record.get('error')}"))
        report = predict_folder(self.predictor, cases, self.output, options=self.batch)
        results = {r.case: r for r in report.results}
        provisional = {k for k in keys if k in self._unverified} | {
            k for k, r in done.items() if k not in keys and r["status"] == "provisional"
        }
        for key in provisional & set(results):
            results[key].warnings.append(f"provisional: {self._unverified.get(key) or done[key].get('count')}")
        if provisional:
            report.write()
        for key in keys + retry:
            result, earlier = results[key], done.get(key, {})
            if key in keys:
                status = "provisional" if key in self._unverified else "ok"
                status = "failed" if result.status == "failed" else status
                record = {
                    "case": key, "status": status, "error": result.error, "instances": len(snapshot[key]),
                    "revision": earlier.get("revision", 0) + 1,
                }  # fmt: skip
                if status == "provisional":
                    record["count"] = self._unverified[key]
            else:
                record = {k: v for k, v in earlier.items() if k not in ("push", "push_error")}
            if self.push_to is not None and record["status"] in RESULTS:
                pushed = push_case(self.output / key, self.push_to, pushed_names(self.batch.outputs))
                record.update(push=pushed.status, push_error=pushed.error)
                if pushed.status == "failed":
                    wait = self._backoff.failed(key, self.clock())
                    logger.warning("series %s: push failed; next try in %.0f s: %s", key, wait, pushed.error)
                else:
                    self._backoff.succeeded(key)
            self._append(record)
            safe = record.get("push", "nothing") in _SAFE_PUSH
            if key in keys:
                self.spool.mark_processed(key, snapshot[key], safe=safe)
                self._waiting.pop(key, None)
            elif safe:
                self.spool.mark_safe(key)
            logger.info(
                "series %s: %s (revision %s, %s instances)%s", key, record["status"], record.get("revision"),
                record.get("instances"), f", push {record['push']}" if "push" in record else "",
            )  # fmt: skip
