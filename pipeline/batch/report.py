"""Batch-run report: one result per case, rewritten atomically after every case so a killed run still leaves
an accurate ``report.json`` and ``summary.csv``; the exit code says whether any case failed."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_json, atomic_write_text
from pipeline.outputs.html_report import write_html_report
from pipeline.outputs.registry import PREVIEW_NAME, VOLUMES_NAME

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "STATUSES", "BatchReport", "CaseResult", "error_text"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
"""Every case is ``ok`` or ``skipped`` (already complete)."""
EXIT_SOME_FAILED = 3
"""At least one case failed; the others were still processed (2 is left to argparse/usage errors)."""

STATUSES = ("ok", "failed", "skipped")
SUMMARY_COLUMNS = (
    "case", "status", "input_kind", "shape", "spacing", "seconds", "error", "warnings",
    "qc_score", "qc_review", "qc_findings",
)  # fmt: skip


def error_text(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, one line, for the report.

    Only the exception's own message is kept (no traceback, no locals): our loaders raise messages that
    name files and rules but never patient names or IDs, so this is safe to save. MONAI's
    ``RuntimeError("applying transform ...")`` wrappers are unwrapped to the error that caused them.
    """
    while isinstance(exc, RuntimeError) and str(exc).startswith("applying transform") and exc.__cause__:
        exc = exc.__cause__
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@dataclass
class CaseResult:
    """Outcome of one case.

    Attributes:
        case: case identifier (the patient-folder name chosen by the user, never read from DICOM).
        status: ``"ok"``, ``"failed"`` or ``"skipped"``.
        error: :func:`error_text` of the failure, ``None`` unless failed.
        input_kind: e.g. ``"dicom"``, ``"nifti"``.
        inputs: input key -> the path read (a NIfTI file or a DICOM folder), so a folder holding both says which.
        warnings: problems that did not stop the case (e.g. the scan's modality differs from the bundle's).
        shape: spatial shape of the input ``(X, Y[, Z])``.
        spacing: voxel sizes in mm.
        seconds: wall time spent on the case.
        outputs: output name -> path relative to the output root.
        qc: the case's quality control (:meth:`pipeline.qc.assess.CaseQC.as_dict`): ``score`` (0-1, higher is
            more likely wrong), ``review``, ``findings``; ``None`` for a failed case.
        timing: seconds per stage of a segmented case: ``read``, ``preprocess`` (resampling included),
            ``network``, ``restore`` (back onto the input grid, clean-up), ``write_<output>`` (``write_mask``,
            ``write_dicom_seg``, ``write_preview``, ...) and ``qc``; empty for a failed or skipped case.
    """

    case: str
    status: str
    error: str | None = None
    input_kind: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    shape: Sequence[int] | None = None
    spacing: Sequence[float] | None = None
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    qc: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.case, str) or not self.case:
            raise ValueError(f"case must be a non-empty string, got {self.case!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError(f"error must be given exactly when status is 'failed' (case {self.case!r})")
        self.shape = None if self.shape is None else [int(v) for v in self.shape]
        self.spacing = None if self.spacing is None else [float(v) for v in self.spacing]
        self.outputs = {str(k): str(v) for k, v in self.outputs.items()}
        self.inputs = {str(k): str(v) for k, v in self.inputs.items()}
        self.warnings = [str(w) for w in self.warnings]
        self.timing = {str(k): round(float(v), 4) for k, v in self.timing.items()}

    @classmethod
    def failed(cls, case: str, exc: BaseException, **kwargs: Any) -> CaseResult:
        """A ``"failed"`` result whose ``error`` is :func:`error_text` of ``exc``."""
        return cls(case=case, status="failed", error=error_text(exc), **kwargs)


def _fmt_list(values: Sequence | None, fmt: str) -> str:
    return "" if values is None else "x".join(format(v, fmt) for v in values)


class BatchReport:
    """Accumulates :class:`CaseResult` s and rewrites ``report.json`` and ``summary.csv`` after each.

    Args:
        out_dir: folder receiving ``report.json`` and ``summary.csv`` (created if missing).
        run_info: JSON-serialisable facts about the run saved under ``"run"`` (bundle name and version,
            device, options); never patient data.
    """

    def __init__(self, out_dir: str | os.PathLike, run_info: Mapping[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run_info = dict(run_info or {})
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.results: list[CaseResult] = []
        self.write()

    @property
    def json_path(self) -> Path:
        return self.out_dir / "report.json"

    @property
    def csv_path(self) -> Path:
        return self.out_dir / "summary.csv"

    @property
    def html_path(self) -> Path:
        return self.out_dir / "report.html"

    def counts(self) -> dict[str, int]:
        """Number of cases per status."""
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    def add(self, result: CaseResult) -> None:
        """Record ``result`` (replacing an earlier one for the same case) and rewrite both files."""
        if not isinstance(result, CaseResult):
            raise TypeError(f"result must be a CaseResult, got {type(result).__name__}")
        self.results = [r for r in self.results if r.case != result.case] + [result]
        if result.status == "failed":
            logger.warning("case %s failed: %s", result.case, result.error)
        self.write()

    def summary_line(self) -> str:
        """``"4 cases: 3 ok, 1 failed, 0 skipped; 1 flagged for review; report: OUT/report.json"``."""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        review = sum(bool(r.qc and r.qc.get("review")) for r in self.results)
        return f"{len(self.results)} cases: {counts}; {review} flagged for review; report: {self.json_path}"

    def exit_code(self) -> int:
        """:data:`EXIT_SOME_FAILED` if any case failed, else :data:`EXIT_OK`."""
        return EXIT_SOME_FAILED if any(r.status == "failed" for r in self.results) else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return {
            "started": self.started,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "run": self.run_info,
            "counts": self.counts(),
            "exit_code": self.exit_code(),
            "timing": self.timing_totals(),
            "cases": [asdict(r) for r in self.results],
        }

    def timing_totals(self) -> dict[str, float]:
        """Seconds per stage summed over the cases segmented in this run, slowest stage first."""
        totals: dict[str, float] = {}
        for r in self.results:
            for stage, seconds in r.timing.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
        return {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}

    def write_html(self, push: Mapping[str, Any] | None = None) -> Path:
        """Write ``report.html`` (:func:`~pipeline.outputs.html_report.write_html_report`) from the results and
        each case's ``volumes.json`` and ``preview.png``; an unreadable ``volumes.json`` is logged and shown
        without volumes. ``push``: the push summary (``push.json``) when the results went to an archive."""
        volumes, previews = {}, {}
        for r in self.results:
            if PREVIEW_NAME in r.outputs:
                previews[r.case] = self.out_dir / r.outputs[PREVIEW_NAME]
            if VOLUMES_NAME in r.outputs:
                path = self.out_dir / r.outputs[VOLUMES_NAME]
                try:
                    volumes[r.case] = json.loads(path.read_text())
                except (OSError, ValueError) as e:
                    logger.warning(
                        "case %s: %s unreadable, report.html shows no volumes for it: %s", r.case, path, e
                    )
        return write_html_report(self.html_path, self.as_dict(), volumes, previews, push=push)

    def write(self) -> None:
        """Rewrite ``report.json`` and ``summary.csv`` atomically."""
        atomic_write_json(self.json_path, self.as_dict())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for r in self.results:
            seconds = "" if r.seconds is None else f"{r.seconds:.2f}"
            writer.writerow(
                [
                    r.case,
                    r.status,
                    r.input_kind or "",
                    _fmt_list(r.shape, "d"),
                    _fmt_list(r.spacing, ".4g"),
                    seconds,
                    r.error or "",
                    " | ".join(r.warnings),
                    "" if r.qc is None else f"{float(r.qc['score']):.4f}",
                    "" if r.qc is None else str(bool(r.qc["review"])).lower(),
                    "" if r.qc is None else " | ".join(r.qc.get("findings") or []),
                ]
            )
        atomic_write_text(self.csv_path, buf.getvalue())
