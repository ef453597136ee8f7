"""End to end against a real Orthanc: DICOMweb and DIMSE in, SEG/RTSTRUCT back, rerun without duplicates,
and ``clinseg serve`` receiving a series and returning its SEG."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from pipeline.outputs.registry import OutputOptions
from pipeline.cli import main
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.pacs.archive import Selection
from pipeline.pacs.batch import predict_archive
from pipeline.pacs.cache import case_key
from pipeline.pacs.connect import open_archive
from pipeline.pacs.credentials import ENV_PASSWORD, ENV_USER, load_credentials
from pipeline.pacs.dimse import DimseArchive
from pipeline.pacs.serve import ServeOptions, StorageNode
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.orthanc_server import CALLING_AET, NODE_AET, PASSWORD, USER, free_port, orthanc, thread_frames, wait_for  # noqa: F401
from tests.test_html_report import Page
from tests.test_predictor import BUNDLE, random_checkpoint

pytestmark = pytest.mark.slow

CASES = ("case_000", "case_001")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_bundle(BUNDLE, ckpt, options=InferenceOptions(roi_size=(32, 32, 16), device="cpu"))


def _series_uid(folder: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(min(folder.iterdir()), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@pytest.fixture
def archive_data(orthanc, tiny_dataset, tmp_path):  # noqa: F811
    """Two synthetic CT patients and one broken series (slices of two sizes) in an otherwise empty Orthanc;
    returns {case name: (study uid, series uid)}."""
    orthanc.clear()
    patients = tiny_dataset.parent / "patients"
    uids = {}
    for name in CASES:
        folder = patients / name / "ct_dicom"
        orthanc.upload(sorted(folder.iterdir()))
        uids[name] = _series_uid(folder)
    broken = tmp_path / "broken"
    paths = []
    for shape, seed, names in (((20, 20, 3), "a", None), ((24, 24, 2), "b", ["x1", "x2"])):
        paths += write_dicom_series(
            np.zeros(shape),
            np.diag([1.0, 1.0, 2.0, 1.0]),
            broken,
            series_uid="1.2.826.0.1.3680043.8.498.1",
            study_uid="1.2.826.0.1.3680043.8.498.2",
            uid_seed=seed,
            file_names=names,
        )
    orthanc.upload(paths)
    uids["broken"] = ("1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.1")
    return uids


def _results_in_orthanc(orthanc, modality: str) -> dict[str, list[pydicom.Dataset]]:  # noqa: F811
    """The ``modality`` instances in Orthanc grouped by the source series they reference."""
    found: dict[str, list] = {}
    for series in orthanc.series_of_modality(modality):
        for instance in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))
            if modality == "SEG":
                ref = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
            else:
                study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                ref = study.RTReferencedSeriesSequence[0].SeriesInstanceUID
            found.setdefault(str(ref), []).append(ds)
    return found


def test_dicomweb_batch_pushes_seg_and_rtstruct_once(orthanc, archive_data, predictor, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    archive = open_archive(f"dicomweb:{orthanc.dicomweb}", credentials=load_credentials())
    studies = tuple(sorted({study for study, _ in archive_data.values()}))
    out = tmp_path / "out"
    outputs = OutputOptions(rtstruct=True)
    run = predict_archive(
        predictor, archive, Selection(studies=studies), out, push_to=archive, outputs=outputs
    )
    status = {r.case: r.status for r in run.report.results}
    assert status == {case_key(archive_data[n][1]): "ok" for n in CASES} | {
        case_key(archive_data["broken"][1]): "failed"
    }
    assert {p.status for p in run.pushed} == {"pushed"} and len(run.pushed) == 2
    for modality in ("SEG", "RTSTRUCT"):
        refs = _results_in_orthanc(orthanc, modality)
        assert sorted(refs) == sorted(archive_data[n][1] for n in CASES), modality
        assert all(len(v) == 1 for v in refs.values())
    for name in CASES:  # the right series: the SEG's source instances are that series' instances
        seg = _results_in_orthanc(orthanc, "SEG")[archive_data[name][1]][0]
        assert seg.StudyInstanceUID == archive_data[name][0]
    patient_text = " ".join(p.name for p in out.rglob("*"))
    assert "PHANTOM" not in patient_text and "case_0" not in patient_text

    rerun = predict_archive(
        predictor, archive, Selection(studies=studies), out, push_to=archive, outputs=outputs
    )
    assert {r.status for r in rerun.report.results if r.status != "failed"} == {"skipped"}
    assert {p.status for p in rerun.pushed} == {"already"}
    assert all(len(v) == 1 for v in _results_in_orthanc(orthanc, "SEG").values())
    assert rerun.exit_code() == 3  # the broken series still fails


def test_dicomweb_without_credentials_is_refused(orthanc, archive_data, predictor, tmp_path):  # noqa: F811
    archive = open_archive(f"dicomweb:{orthanc.dicomweb}")
    with pytest.raises(RuntimeError, match="QIDO-RS study query failed with HTTP 401"):
        predict_archive(predictor, archive, Selection(modality="CT"), tmp_path / "out")


def test_cli_predict_from_dicomweb_with_push(orthanc, archive_data, ckpt, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    out = tmp_path / "out"
    argv = ["predict", str(BUNDLE), "--input", f"dicomweb:{orthanc.dicomweb}", "--output", str(out),
            "--checkpoint", str(ckpt), "--roi-size", "32", "32", "16", "--device", "cpu", "--modality", "CT",
            "--push", "--quiet"]  # fmt: skip
    assert main(argv) == 3  # the broken series fails; the others are segmented and pushed
    pushed = json.loads((out / "push.json").read_text())
    assert [c["status"] for c in pushed["cases"]] == ["pushed", "pushed"] and pushed["failed"] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"ok": 2, "failed": 1, "skipped": 0}
    page = Page((out / "report.html").read_text())  # the page shows each case's push outcome
    assert {case: row["cells"][4] for case, row in zip(page.cases, page.rows)} == {
        c["case"]: "not pushed" if c["status"] == "failed" else "pushed (1)"  # seg.dcm; no --rtstruct
        for c in report["cases"]
    }
    assert PASSWORD not in caplog.text and PASSWORD not in (out / "report.json").read_text()


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_dimse_batch_pushes_seg_with_c_store(orthanc, archive_data, predictor, tmp_path, retrieve):  # noqa: F811
    archive = DimseArchive.parse(
        orthanc.dimse, calling_aet=CALLING_AET, retrieve=retrieve, move_port=orthanc.move_port
    )
    name = CASES[0]
    selection = Selection(series=(archive_data[name][1],))
    run = predict_archive(predictor, archive, selection, tmp_path / "out", push_to=archive)
    assert [(r.case, r.status) for r in run.report.results] == [(case_key(archive_data[name][1]), "ok")]
    assert [p.status for p in run.pushed] == ["pushed"]
    assert list(_results_in_orthanc(orthanc, "SEG")) == [archive_data[name][1]]


def test_serve_receives_a_series_and_returns_its_seg(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    push_to = DimseArchive.parse(orthanc.dimse, calling_aet=NODE_AET)
    options = ServeOptions(
        ae_title=NODE_AET, port=orthanc.node_port, quiet_seconds=1.0, poll_seconds=0.2, allow_aets=("SENDER",),
        settle_seconds=1.0,
    )
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", push_to=push_to, options=options)
    thread = threading.Thread(target=node.serve_forever, daemon=True)
    thread.start()
    try:
        folder = tiny_dataset.parent / "patients" / CASES[1] / "ct_dicom"
        _, series_uid = _series_uid(folder)
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        for _ in range(50):  # the node's listener comes up in its thread
            assoc = ae.associate("127.0.0.1", orthanc.node_port, ae_title=NODE_AET)
            if assoc.is_established:
                break
            time.sleep(0.1)
        statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in sorted(folder.iterdir())]
        bad = pydicom.dcmread(min(folder.iterdir()))
        del bad.SeriesInstanceUID
        bad.SOPInstanceUID = "1.2.3.4"
        bad_status = assoc.send_c_store(bad).Status
        assoc.release()
        assert set(statuses) == {0} and bad_status != 0
        assert wait_for(lambda: _results_in_orthanc(orthanc, "SEG"), explain=lambda: f"{node.journal()}, node thread: {thread_frames(thread)}")
        assert list(_results_in_orthanc(orthanc, "SEG")) == [series_uid]
    finally:
        node.stop()
        thread.join(timeout=30)
    journal = node.journal()
    assert list(journal) == [case_key(series_uid)] and journal[case_key(series_uid)]["push"] == "pushed"
    # a restarted node over the same spool processes nothing again
    again = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", push_to=push_to, options=options)
    assert again.process_ready() == []
