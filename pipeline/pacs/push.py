"""Results back to an archive: each case's pushed outputs (``seg.dcm``, ``rtstruct.dcm``: the registry's
``pushed`` entries, :func:`pipeline.outputs.registry.pushed_names`) stored once per destination.

A ledger ``OUT/<case>/.pushed.json`` records, per destination label, the SOPInstanceUIDs stored and the last
error, so a rerun stores nothing twice and retries what failed. ``OUT/push.json`` sums up the last push.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom

from pipeline.batch.report import BatchReport, error_text
from pipeline.core.atomic import atomic_write_json
from pipeline.pacs.archive import Archive

__all__ = ["LEDGER", "PushResult", "push_case", "push_report"]

logger = logging.getLogger(__name__)

LEDGER = ".pushed.json"
PUSH_REPORT = "push.json"


@dataclass(frozen=True)
class PushResult:
    """``status``: ``pushed`` (stored now), ``already`` (stored by an earlier run), ``nothing`` (no DICOM
    result to store) or ``failed`` (``error`` says why; retried on rerun)."""

    case: str
    status: str
    stored: int = 0
    error: str | None = None


def _ledger(case_dir: Path) -> dict:
    try:
        record = json.loads((case_dir / LEDGER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def push_case(case_dir: Path, destination: Archive, names: Sequence[str]) -> PushResult:
    """Store the files ``names`` of ``case_dir`` that exist and are not yet at ``destination``."""
    case = case_dir.name
    files = [case_dir / n for n in names if (case_dir / n).is_file()]
    if not files:
        return PushResult(case, "nothing")
    ledger = _ledger(case_dir)
    entry = ledger.setdefault(destination.label, {"stored": [], "error": None})
    done = set(entry["stored"])
    uids = {
        p: str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for p in files
    }
    todo = [p for p in files if uids[p] not in done]
    if not todo:
        return PushResult(case, "already")
    try:
        destination.store(todo)
    except Exception as e:  # noqa: BLE001 - recorded per case, retried on the next run
        entry["error"] = error_text(e)
        atomic_write_json(case_dir / LEDGER, ledger)
        logger.warning("case %s: push to %s failed: %s", case, destination.label, entry["error"])
        return PushResult(case, "failed", error=entry["error"])
    entry["stored"] = sorted(done | {uids[p] for p in todo})
    entry["error"] = None
    atomic_write_json(case_dir / LEDGER, ledger)
    logger.info("case %s: stored %d objects at %s", case, len(todo), destination.label)
    return PushResult(case, "pushed", stored=len(todo))


def push_report(
    report: BatchReport, output: Path, destination: Archive, names: Iterable[str]
) -> list[PushResult]:
    """Push every finished case (``ok`` or ``skipped``) of ``report``; write ``OUT/push.json`` and rewrite
    ``OUT/report.html`` with each case's push outcome."""
    names = list(names)
    results = [
        push_case(output / r.case, destination, names)
        for r in report.results
        if r.status in ("ok", "skipped")
    ]
    summary = {
        "destination": destination.label,
        "cases": [asdict(r) for r in results],
        "failed": sum(r.status == "failed" for r in results),
    }
    atomic_write_json(output / PUSH_REPORT, summary)
    report.write_html(push=summary)
    return results
