"""Batch inference over a folder of patients: one bad case never stops the batch, reruns skip finished cases.

Layout of ``OUT`` (see :mod:`pipeline.batch.case_outputs` for the per-case files)::

    OUT/<case>/seg.nii.gz, volumes.json, qc.json, preview.png[, seg.dcm][, probabilities.nii.gz], .complete.json
    OUT/report.json, summary.csv, volumes.csv      (per shard: report.shard-i-of-n.json, ...)
    OUT/report.html                                 (written when the batch ends; see pipeline.outputs.html_report)

A case is finished when its ``.complete.json`` lists every output with its size and the run settings
(bundle, checkpoints, sliding window, TTA, cropping, postprocessing) equal the current ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from pipeline.core.atomic import (
    COMPLETE_MARKER, atomic_write, atomic_write_json, clear_complete, is_complete, mark_complete,
)  # fmt: skip
from pipeline.core.heap import return_freed_memory
from pipeline.core.progress import progress_bar
from pipeline.batch.case_outputs import write_case_outputs
from pipeline.batch.discovery import DEFAULT_MODALITIES, Case, discover_cases
from pipeline.inference.case import LoadedCase
from pipeline.inference.predictor import Predictor
from pipeline.batch.prefetch import Prefetched, prefetch
from pipeline.batch.report import BatchReport, CaseResult, error_text
from pipeline.batch.shard import Shard
from pipeline.outputs.preview_window import preview_window
from pipeline.outputs.registry import SEG_NAME, VOLUMES_NAME, OutputOptions, output_settings, required_outputs
from pipeline.outputs.volumetry import write_volumes_csv
from pipeline.qc.assess import REVIEW_THRESHOLD, assess_case

__all__ = ["QC_NAME", "BatchOptions", "predict_folder"]

logger = logging.getLogger(__name__)

LAYOUTS = ("case", "flat")
QC_NAME = "qc.json"
"""A case's QC block (as in ``report.json``), kept so a rerun that skips the case still reports it."""


@dataclass(frozen=True)
class BatchOptions:
    """How a folder is processed.

    Attributes:
        split: datalist split when the source is a JSON file.
        overwrite: redo cases whose outputs are already complete.
        outputs: optional per-case files (:mod:`pipeline.outputs.registry`).
        prefetch: cases loaded and preprocessed ahead in background threads (0: none). ``None``: one when the
            network runs on a GPU; none on CPU, where loading would compete with the network for the same cores
            (measured slower on 2 cores, benchmarks/RESULTS.md).
        workers: loading threads.
        shard: the part of the sorted cases this process handles.
        progress: show a progress bar (cases done, failures, cases/min) on stderr when it is a terminal.
        qc_threshold: QC score from which a case is flagged for review (:mod:`pipeline.qc.assess`).
        layout: ``"case"`` (everything in ``OUT/<case>/``) or ``"flat"``: the mask also as ``OUT/<case>.nii.gz``,
            as nnU-Net's predictor writes it (a hard link to ``OUT/<case>/seg.nii.gz`` where the file system
            allows).
        strip_channel_suffix: drop nnU-Net's ``_0000`` from case names of NIfTI files (``None``: when all have it).
    """

    split: str = "test"
    overwrite: bool = False
    outputs: OutputOptions = field(default_factory=OutputOptions)
    prefetch: int | None = None
    workers: int = 1
    shard: Shard = field(default_factory=Shard)
    progress: bool = False
    qc_threshold: float = REVIEW_THRESHOLD
    layout: str = "case"
    strip_channel_suffix: bool | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")


class _ShardReport(BatchReport):
    """``BatchReport`` writing ``report<suffix>.json`` / ``summary<suffix>.csv`` (suffix ``.shard-i-of-n``)."""

    def __init__(self, out_dir: Path, run_info: dict[str, Any], suffix: str) -> None:
        self.suffix = suffix
        super().__init__(out_dir, run_info)

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"report{self.suffix}.json"

    @property
    def csv_path(self) -> Path:
        return self.out_dir / f"summary{self.suffix}.csv"

    @property
    def html_path(self) -> Path:
        return self.out_dir / f"report{self.suffix}.html"


def predict_folder(
    predictor: Predictor,
    source: str | Path | Sequence[Case],
    output: str | Path,
    *,
    options: BatchOptions | None = None,
    **changes: Any,
) -> BatchReport:
    """Segment every case of ``source`` (this shard's share) into ``output/<case>/`` on each input's own grid.

    Args:
        predictor: a built :class:`~pipeline.inference.predictor.Predictor`.
        source: folder of patient folders, flat folder of NIfTI files, a datalist JSON, or cases found by the
            caller (e.g. series retrieved from an archive, :mod:`pipeline.pacs`).
        output: output folder; the report, summary and volumes table are rewritten after every case.
        options: batch options; ``changes`` replace single fields (``overwrite=True``, ``split="test"``).

    Returns:
        The report; ``report.exit_code()`` is 0 when no case failed, 3 otherwise.
    """
    options = replace(options or BatchOptions(), **changes)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, Path)):
        modalities = {k: DEFAULT_MODALITIES.get(k, (k,)) for k in predictor.input_keys}
        found = discover_cases(
            source, split=options.split, modalities=modalities, strip_channel_suffix=options.strip_channel_suffix
        )
    else:
        found = sorted(source, key=lambda c: c.case_id)
    cases = options.shard.select(found)
    settings = {**predictor.settings(), **output_settings(options.outputs)}
    shard_text = f"{options.shard.index}/{options.shard.count}"
    run_info = {
        **settings,
        "device": str(predictor.device),
        # the runner chosen and its timings (a Predictor's; not a setting: a rerun may measure differently)
        **({"inference_backend": predictor.backend_info()} if hasattr(predictor, "backend_info") else {}),
        "source_kind": _kind(source),
        "shard": shard_text,
        "intensity_modality": predictor.input_modalities.get(predictor.input_keys[0]),  # HU statistics for CT
        "labels": {str(value): name for value, name in predictor.label_names.items()},
    }
    report = _ShardReport(output, run_info, options.shard.suffix)
    volumes: dict[str, list[dict]] = {}
    logger.info("%d cases found, %d in shard %s", len(found), len(cases), shard_text)

    todo: list[Case] = []
    for case in cases:
        case_dir = output / case.case_id
        # appended without a rewrite each: the report is written once after this loop
        for warning in case.warnings:
            logger.warning("case %s: %s", case.case_id, warning)
        if case.skip:
            logger.warning("case %s skipped: %s", case.case_id, case.skip)
            report.results.append(
                CaseResult(case=case.case_id, status="skipped", input_kind=case.kind, warnings=[case.skip])
            )
        elif case.problem:
            logger.warning("case %s failed: %s", case.case_id, case.problem)
            report.results.append(
                CaseResult(
                    case=case.case_id, status="failed", error=case.problem, input_kind=case.kind,
                    inputs=case.inputs, warnings=list(case.warnings),
                )
            )
        elif not options.overwrite and _finished(case_dir, options.outputs, settings):
            volumes[case.case_id] = json.loads((case_dir / VOLUMES_NAME).read_text())
            report.results.append(
                CaseResult(
                    case=case.case_id,
                    status="skipped",
                    input_kind=case.kind,
                    inputs=case.inputs,
                    warnings=_marker(case_dir).get("warnings", list(case.warnings)),
                    outputs=_relative(case, _listed_outputs(case_dir)),
                    qc=_saved_qc(case_dir),
                )
            )
            if options.layout == "flat":
                _place_flat(output, case.case_id)
        else:
            todo.append(case)
    report.write()
    _write_volumes(output, options.shard, cases, volumes)

    start = time.perf_counter()
    done_before = len(cases) - len(todo)
    with progress_bar(total=len(cases), initial=done_before, unit="case", enabled=options.progress) as bar:
        loaded = prefetch(
            todo, lambda c: predictor.load(c.inputs), ahead=_prefetch(options, predictor), workers=options.workers
        )
        for done, item in enumerate(loaded, 1):
            case = item.item
            result, rows = _finish_case(predictor, item, output / case.case_id, options, settings)
            del item  # the loaded case: its images and network-grid data
            return_freed_memory()
            if rows is not None:
                volumes[case.case_id] = rows
                if options.layout == "flat":
                    _place_flat(output, case.case_id)
            report.add(result)
            _write_volumes(output, options.shard, cases, volumes)
            level = logging.WARNING if result.status == "failed" else logging.INFO
            logger.log(
                level, "%s: %s%s", case.case_id, result.status, f" ({result.error})" if result.error else ""
            )
            failed = report.counts()["failed"]
            bar.set_postfix(failed=failed, per_min=f"{60 * done / (time.perf_counter() - start):.1f}")
            bar.update()
    report.write_html()
    logger.info("%s", report.summary_line())
    return report


def _finish_case(
    predictor: Predictor, item: Prefetched, case_dir: Path, options: BatchOptions, settings: dict[str, Any]
) -> tuple[CaseResult, list[dict] | None]:
    case: Case = item.item
    outputs = options.outputs
    start = time.perf_counter()
    if case_dir.is_dir():
        clear_complete(case_dir)  # before anything is rewritten: an interrupted redo must not look finished
        for stale in case_dir.glob(".tmp-*"):  # left by a killed run; only this process writes this case
            stale.unlink()
    known = {"input_kind": case.kind, "inputs": case.inputs}
    if item.error is not None:
        logger.debug("case %s failed to load", case.case_id, exc_info=item.error)
        return CaseResult.failed(
            case.case_id, item.error, warnings=list(case.warnings), seconds=item.seconds, **known
        ), None
    loaded: LoadedCase = item.value
    warnings = list(case.warnings)
    try:
        for warning in loaded.warnings:
            logger.warning("case %s: %s", case.case_id, warning)
            warnings.append(warning)
        segmentation = predictor.segment(loaded, keep_probabilities=outputs.probabilities)
        image = loaded.reference
        case_dir.mkdir(parents=True, exist_ok=True)
        written = write_case_outputs(
            segmentation,
            image,
            case_dir,
            predictor.label_names,
            kind=case.kind,
            options=outputs,
            display_window=preview_window(
                image.meta.get("modality") or predictor.input_modalities.get(loaded.keys[0]),
                predictor.display_window,
            ),
            algorithm_name=predictor.bundle_name or "clinseg",
        )
        names, rows = written.names, written.volumes
        for warning in written.warnings:
            logger.warning("case %s: %s", case.case_id, warning)
            warnings.append(warning)
        qc_start = time.perf_counter()
        qc = _case_qc(predictor, loaded, segmentation, options.qc_threshold, warnings)
        qc_s = time.perf_counter() - qc_start
        if qc is not None:
            atomic_write_json(case_dir / QC_NAME, qc)
            names.append(QC_NAME)
        mark_complete(case_dir, names, info=settings, warnings=warnings)
    except Exception as e:  # one bad case must never stop the batch; the reason goes to the report
        logger.debug("case %s failed", case.case_id, exc_info=True)
        return CaseResult.failed(
            case.case_id, e, warnings=warnings, seconds=item.seconds + time.perf_counter() - start, **known
        ), None
    seg = segmentation.labels
    result = CaseResult(
        case=case.case_id,
        status="ok",
        warnings=warnings,
        shape=list(seg.shape[1:]),
        spacing=[float(v) for v in image.pixdim],
        seconds=item.seconds + time.perf_counter() - start,
        outputs=_relative(case, names),
        qc=qc,
        timing={
            **loaded.seconds,
            "network": segmentation.seconds.get("inference", 0.0),
            "restore": segmentation.seconds.get("restore", 0.0),
            **{f"write_{name}": s for name, s in written.seconds.items()},
            "qc": qc_s,
        },
        **known,
    )
    return result, rows


def _case_qc(
    predictor: Predictor, loaded: LoadedCase, segmentation: Any, threshold: float, warnings: list[str]
) -> dict[str, Any] | None:
    """The case's QC block; a QC error is a warning of the case (its mask stands), never its failure."""
    try:
        return assess_case(
            predictor.qc_reference, loaded.inputs, segmentation.labels, predictor.label_names,
            segmentation.uncertainty, threshold=threshold,
        ).as_dict()  # fmt: skip
    except Exception as e:
        logger.debug("QC failed", exc_info=True)
        warnings.append(f"no QC verdict: {error_text(e)}")
        return None


def _prefetch(options: BatchOptions, predictor: Predictor) -> int:
    if options.prefetch is not None:
        return options.prefetch
    return 1 if predictor.device.type != "cpu" else 0


def _finished(case_dir: Path, outputs: OutputOptions, settings: dict[str, Any]) -> bool:
    names = set(required_outputs(outputs)) | set(_listed_outputs(case_dir))
    return is_complete(case_dir, sorted(names), info=settings)


def _marker(case_dir: Path) -> dict[str, Any]:
    """The case's completion marker, ``{}`` when absent or unreadable."""
    try:
        record = json.loads((case_dir / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _saved_qc(case_dir: Path) -> dict[str, Any] | None:
    """The ``qc.json`` of a finished case, ``None`` when absent or unreadable (a case finished before QC)."""
    try:
        record = json.loads((case_dir / QC_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _listed_outputs(case_dir: Path) -> list[str]:
    try:
        return list(_marker(case_dir)["outputs"])
    except (KeyError, TypeError):
        return []


def _relative(case: Case, names: list[str]) -> dict[str, str]:
    return {name: f"{case.case_id}/{name}" for name in names}


def _place_flat(output: Path, case_id: str) -> None:
    """``OUT/<case>.nii.gz``: the case's mask, hard-linked (copied where links are not possible)."""
    flat, mask = output / f"{case_id}.nii.gz", output / case_id / SEG_NAME
    with atomic_write(flat) as tmp:
        try:
            os.link(mask, tmp)
        except OSError:
            shutil.copyfile(mask, tmp)


def _write_volumes(output: Path, shard: Shard, cases: list[Case], volumes: dict[str, list[dict]]) -> None:
    rows = [{"case": c.case_id, **row} for c in cases for row in volumes.get(c.case_id, [])]
    write_volumes_csv(rows, output / f"volumes{shard.suffix}.csv")


def _kind(source: str | Path | Sequence[Case]) -> str:
    if not isinstance(source, (str, Path)):
        return "cases"
    return "datalist" if str(source).endswith(".json") else "folder"
