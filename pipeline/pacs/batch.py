"""Batch inference over series retrieved from an archive: retrieve into the cache, segment as a folder batch,
optionally push the DICOM results back.

Case folders are named by :func:`pipeline.pacs.cache.case_key` (a hash of the SeriesInstanceUID). A series that
fails to retrieve or verify is a failed case in the report; the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.batch.discovery import Case
from pipeline.batch.report import EXIT_SOME_FAILED, BatchReport, error_text
from pipeline.batch.runner import BatchOptions, predict_folder
from pipeline.inference.predictor import Predictor
from pipeline.pacs.archive import Archive, Selection, SeriesRef, find_series
from pipeline.pacs.cache import SeriesCache, case_key
from pipeline.outputs.registry import pushed_names
from pipeline.pacs.push import PushResult, push_report

__all__ = ["ArchiveRun", "predict_archive", "retrieve_cases"]

logger = logging.getLogger(__name__)

CACHE_DIR = ".cache"


@dataclass
class ArchiveRun:
    """The batch report and, when results were pushed, one :class:`PushResult` per finished case."""

    report: BatchReport
    pushed: list[PushResult] = field(default_factory=list)

    def exit_code(self) -> int:
        """:data:`~pipeline.batch.report.EXIT_SOME_FAILED` when a case or a push failed, else 0."""
        failed_push = any(p.status == "failed" for p in self.pushed)
        return self.report.exit_code() or (EXIT_SOME_FAILED if failed_push else 0)

    def summary_line(self) -> str:
        line = self.report.summary_line()
        if self.pushed:
            counts = {
                s: sum(p.status == s for p in self.pushed) for s in ("pushed", "already", "nothing", "failed")
            }
            line += "; push: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        return line


def retrieve_cases(
    archive: Archive, refs: Sequence[SeriesRef], cache: SeriesCache, input_key: str
) -> list[Case]:
    """One DICOM case per series, its folder in ``cache``; a series that cannot be retrieved is a failed case."""
    cases = []
    for ref in refs:
        key = case_key(ref.series_uid)
        try:
            folder = cache.fetch(archive, ref)
        except Exception as e:  # recorded in the report; the other series go on
            logger.debug("series %s: retrieval failed", key, exc_info=True)
            cases.append(Case(key, {}, "missing", f"retrieval from {archive.label} failed: {error_text(e)}"))
            continue
        cases.append(Case(key, {input_key: str(folder)}, "dicom"))
    return cases


def predict_archive(
    predictor: Predictor,
    archive: Archive,
    selection: Selection,
    output: str | Path,
    *,
    cache_dir: str | Path | None = None,
    push_to: Archive | None = None,
    options: BatchOptions | None = None,
    **changes: Any,
) -> ArchiveRun:
    """Segment the selected series of ``archive`` into ``output/<case key>/``, as :func:`predict_folder` does.

    Args:
        predictor: a single-input bundle's predictor.
        archive: where the series come from (:func:`pipeline.pacs.connect.open_archive`).
        selection: which series.
        output: output folder (report, summary, one folder per series).
        cache_dir: where retrieved series are kept (default ``output/.cache``); reruns reuse it.
        push_to: store each finished case's ``seg.dcm`` (and ``rtstruct.dcm`` when the options write it) there.
        options, changes: batch options, as for :func:`predict_folder`.

    Raises:
        ValueError: a multi-input bundle, or nothing in the archive matches the selection.
    """
    if len(predictor.input_keys) != 1:
        raise ValueError(
            f"archive input feeds one image series; the bundle needs {list(predictor.input_keys)}"
        )
    output = Path(output)
    refs = find_series(archive, selection)
    if not refs:
        raise ValueError(f"no image series on {archive.label} match the selection")
    logger.info("%d series selected on %s", len(refs), archive.label)
    cache = SeriesCache(cache_dir if cache_dir is not None else output / CACHE_DIR)
    cases = retrieve_cases(archive, refs, cache, next(iter(predictor.input_keys)))
    batch = replace(options or BatchOptions(), **changes)
    report = predict_folder(predictor, cases, output, options=batch)
    run = ArchiveRun(report)
    if push_to is not None:
        run.pushed = push_report(report, output, push_to, pushed_names(batch.outputs))
    logger.info("%s", run.summary_line())
    return run
