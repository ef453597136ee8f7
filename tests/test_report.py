"""Batch report: incremental atomic rewrites, counts, exit codes, validation, error text."""

from __future__ import annotations

import csv
import json

import pytest

from pipeline.batch.report import EXIT_OK, EXIT_SOME_FAILED, BatchReport, CaseResult, error_text


def _read(report: BatchReport):
    data = json.loads(report.json_path.read_text())
    with open(report.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return data, rows


def test_report_is_rewritten_after_each_case(tmp_path):
    report = BatchReport(tmp_path / "out", run_info={"bundle": "spleen_ct", "version": "0.2.0"})
    data, rows = _read(report)  # exists before the first case finishes
    assert data["cases"] == [] and rows == [] and data["run"]["bundle"] == "spleen_ct"

    report.add(
        CaseResult(
            "case_a",
            "ok",
            input_kind="dicom",
            shape=(512, 512, 20),
            spacing=(0.977, 0.977, 2.0),
            seconds=3.14159,
            outputs={"mask": "case_a/seg.nii.gz"},
            inputs={"image": "in/case_a"},
            warnings=["input 'image': odd", "second"],
        )
    )
    data, rows = _read(report)
    assert data["counts"] == {"ok": 1, "failed": 0, "skipped": 0} and data["exit_code"] == EXIT_OK
    assert data["cases"][0]["outputs"] == {"mask": "case_a/seg.nii.gz"}
    assert rows[0] == {
        "case": "case_a",
        "status": "ok",
        "input_kind": "dicom",
        "shape": "512x512x20",
        "spacing": "0.977x0.977x2",
        "seconds": "3.14",
        "error": "",
        "warnings": "input 'image': odd | second",
        "qc_score": "",
        "qc_review": "",
        "qc_findings": "",
    }
    assert data["cases"][0]["inputs"] == {"image": "in/case_a"}

    try:
        raise ValueError("series in 'case_b/ct' has 2 orientations;\n pass series_rule")
    except ValueError as exc:
        report.add(CaseResult.failed("case_b", exc, input_kind="dicom", seconds=0.5))
    report.add(CaseResult("case_c", "skipped"))
    data, rows = _read(report)
    assert data["counts"] == {"ok": 1, "failed": 1, "skipped": 1}
    assert report.exit_code() == data["exit_code"] == EXIT_SOME_FAILED == 3
    assert rows[1]["error"] == "ValueError: series in 'case_b/ct' has 2 orientations; pass series_rule"
    assert rows[2]["shape"] == "" and rows[2]["seconds"] == ""
    assert sorted(p.name for p in report.out_dir.iterdir()) == ["report.json", "summary.csv"]


def test_rerun_of_a_case_replaces_its_result(tmp_path):
    report = BatchReport(tmp_path)
    report.add(CaseResult.failed("a", RuntimeError("boom")))
    report.add(CaseResult("a", "ok"))
    assert [r.status for r in report.results] == ["ok"] and report.exit_code() == EXIT_OK


def test_error_text():
    assert error_text(KeyError()) == "KeyError"
    assert error_text(OSError("a\n  b")) == "OSError: a b"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"case": "", "status": "ok"}, "non-empty string"),
        ({"case": "a", "status": "done"}, "status must be one of"),
        ({"case": "a", "status": "failed"}, "exactly when status is 'failed'"),
        ({"case": "a", "status": "ok", "error": "x"}, "exactly when status is 'failed'"),
    ],
)
def test_case_result_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaseResult(**kwargs)


def test_add_rejects_other_types(tmp_path):
    with pytest.raises(TypeError, match="CaseResult"):
        BatchReport(tmp_path).add({"case": "a", "status": "ok"})


def test_error_text_unwraps_monai_transform_wrappers():
    from monai.transforms import Lambda, apply_transform

    def fail(_):
        raise ValueError("scan.nii.gz: cannot read as NIfTI")

    with pytest.raises(RuntimeError) as info:
        apply_transform(Lambda(fail), {"image": 1})
    assert error_text(info.value) == "ValueError: scan.nii.gz: cannot read as NIfTI"
