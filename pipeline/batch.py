"""Batch inference over a folder of patients: one bad case never stops the batch, reruns skip finished cases."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.atomic import clear_complete, is_complete, mark_complete
from pipeline.discovery import Case, discover_cases
from pipeline.predictor import Predictor
from pipeline.report import BatchReport, CaseResult, error_text
from pipeline.writers import write_mask_nifti

logger = logging.getLogger(__name__)

SEG_NAME = "seg.nii.gz"


def predict_folder(
    predictor: Predictor, source: str | Path, output: str | Path, *, split: str = "test", overwrite: bool = False
) -> BatchReport:
    """Segment every case of ``source`` into ``output/<case>/seg.nii.gz`` on each input's own grid.

    Args:
        predictor: a built :class:`~pipeline.predictor.Predictor`.
        source: folder of patient folders, flat folder of NIfTI files, or a datalist JSON.
        output: output folder; ``report.json`` and ``summary.csv`` are rewritten after every case.
        split: datalist split when ``source`` is a JSON file.
        overwrite: redo cases whose outputs are already complete.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cases = discover_cases(source, split=split, modalities={k: _stems(k) for k in predictor.input_keys})
    info = {"bundle": predictor.bundle_name, "checkpoints": predictor.checkpoint_names}
    report = BatchReport(output, run_info={**info, "device": str(predictor.device), "source_kind": _kind(source)})
    for index, case in enumerate(cases, 1):
        result = _predict_one(predictor, case, output / case.case_id, overwrite, info)
        report.add(result)
        level = logging.WARNING if result.status == "failed" else logging.INFO
        logger.log(level, "[%d/%d] %s: %s%s", index, len(cases), case.case_id, result.status,
                   f" ({result.error})" if result.error else "")
    return report


def _kind(source: str | Path) -> str:
    return "datalist" if str(source).endswith(".json") else "folder"


def _stems(key: str) -> tuple[str, ...]:
    return ("ct", "image", "img", "scan") if key == "image" else (key,)


def _predict_one(predictor: Predictor, case: Case, case_dir: Path, overwrite: bool, info: dict) -> CaseResult:
    outputs = {SEG_NAME: f"{case.case_id}/{SEG_NAME}"}
    if not overwrite and is_complete(case_dir, [SEG_NAME], info=info):
        return CaseResult(case=case.case_id, status="skipped", input_kind=case.kind, outputs=outputs)
    start = time.perf_counter()
    if case.problem:
        return CaseResult(case=case.case_id, status="failed", error=case.problem, input_kind=case.kind)
    try:
        seg = predictor.predict_case(case.inputs)
        case_dir.mkdir(parents=True, exist_ok=True)
        clear_complete(case_dir)
        write_mask_nifti(seg, seg.affine, case_dir / SEG_NAME)
        mark_complete(case_dir, [SEG_NAME], info=info)
    except Exception as e:  # one bad case must never stop the batch; the reason goes to the report
        logger.debug("case %s failed", case.case_id, exc_info=True)
        return CaseResult(case=case.case_id, status="failed", error=error_text(e), input_kind=case.kind,
                          seconds=time.perf_counter() - start)
    return CaseResult(case=case.case_id, status="ok", input_kind=case.kind, shape=list(seg.shape[1:]),
                      spacing=[float(v) for v in seg.pixdim], seconds=time.perf_counter() - start, outputs=outputs)
