"""``clinseg serve`` never segments half a series (issue 26), against a real Orthanc and a pynetdicom sender:
a sender pausing longer than the quiet time, a node stopped mid-series and restarted before the resend,
unknown AE titles refused, and a full spool answering 0xA700."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from pipeline.pacs.cache import case_key
from pipeline.pacs.dimse import DimseArchive
from pipeline.pacs.serve import OUT_OF_RESOURCES, ServeOptions, StorageNode
from pipeline.pacs.spool import RECEIVING, SpoolLimits
from tests.orthanc_server import NODE_AET, orthanc  # noqa: F401
from tests.test_pacs_orthanc import CASES, _results_in_orthanc, _series_uid, ckpt, predictor  # noqa: F401

pytestmark = pytest.mark.slow

CT = "1.2.840.10008.5.1.4.1.1.2"
QUIET = 1.0


def _slices(tiny_dataset) -> list[Path]:
    return sorted((tiny_dataset.parent / "patients" / CASES[1] / "ct_dicom").iterdir())


def _sender(port: int, calling: str = "SENDER", called: str = NODE_AET):
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    for _ in range(50):  # the node's listener comes up in its thread
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if assoc.is_established or assoc.is_rejected:
            return assoc
        time.sleep(0.1)
    return assoc


def _next_slice(slices: list[Path]) -> pydicom.Dataset:
    """One more slice after the series' last position (a new SOPInstanceUID)."""
    first, second = (pydicom.dcmread(p, stop_before_pixels=True) for p in slices[:2])
    step = [float(b) - float(a) for a, b in zip(first.ImagePositionPatient, second.ImagePositionPatient)]
    positions = [pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient for p in slices]
    end = max(positions, key=lambda p: sum(float(v) * s for v, s in zip(p, step)))
    extra = pydicom.dcmread(slices[0])
    extra.ImagePositionPatient = [float(v) + s for v, s in zip(end, step)]
    extra.SOPInstanceUID = generate_uid()
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    extra.InstanceNumber = len(slices) + 1
    return extra


def _run(node: StorageNode) -> threading.Thread:
    thread = threading.Thread(target=node.serve_forever, daemon=True)
    thread.start()
    return thread


def _stop(node: StorageNode, thread: threading.Thread) -> None:
    node.stop()
    thread.join(timeout=60)


def _wait_for(condition, seconds: float = 180) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.3)
    return condition()


def _node(predictor, tmp_path, orthanc, **kwargs):  # noqa: F811
    options = ServeOptions(ae_title=NODE_AET, port=orthanc.node_port, quiet_seconds=QUIET, poll_seconds=0.2,
                           allow_aets=("SENDER",))  # fmt: skip
    push_to = DimseArchive.parse(orthanc.dimse, calling_aet=NODE_AET)
    return StorageNode(predictor, tmp_path / "spool", tmp_path / "out", push_to=push_to, options=options, **kwargs)


def _seg_references(orthanc) -> list[int]:  # noqa: F811
    """Per SEG in Orthanc, how many source instances it references."""
    return [
        len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)
        for segs in _results_in_orthanc(orthanc, "SEG").values()
        for seg in segs
    ]


def test_a_sender_pausing_longer_than_the_quiet_time_gets_one_whole_series(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    node = _node(predictor, tmp_path, orthanc)
    thread = _run(node)
    try:
        assoc = _sender(orthanc.node_port)
        half = len(slices) // 2
        assert {assoc.send_c_store(pydicom.dcmread(p)).Status for p in slices[:half]} == {0}
        time.sleep(3 * QUIET + 1)  # the association stays open: the series is not complete
        assert node.journal() == {}
        assert {assoc.send_c_store(pydicom.dcmread(p)).Status for p in slices[half:]} == {0}
        assoc.release()
        assert _wait_for(lambda: _seg_references(orthanc))
    finally:
        _stop(node, thread)
    key = case_key(_series_uid(slices[0].parent)[1])
    record = node.journal()[key]
    assert record["status"] == "ok" and record["instances"] == len(slices) and record["push"] == "pushed"
    assert _seg_references(orthanc) == [len(slices)]


def test_a_node_stopped_mid_series_waits_for_the_resend_then_segments_it_whole(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    key = case_key(_series_uid(slices[0].parent)[1])
    node = _node(predictor, tmp_path, orthanc)
    thread = _run(node)
    assoc = _sender(orthanc.node_port)
    half = len(slices) // 2
    assert {assoc.send_c_store(pydicom.dcmread(p)).Status for p in slices[:half]} == {0}
    node.stop()  # the node goes down mid-series: the sender's association is cut
    thread.join(timeout=60)
    assoc.abort()
    assert (tmp_path / "spool" / "incoming" / key / RECEIVING).exists()
    restarted = _node(predictor, tmp_path, orthanc)
    thread = _run(restarted)
    try:
        time.sleep(3 * QUIET + 1)  # longer than the quiet time after the restart: half a series waits
        assert key not in restarted.journal() and not _seg_references(orthanc)
        resend = _sender(orthanc.node_port)
        assert {resend.send_c_store(pydicom.dcmread(p)).Status for p in slices} == {0}
        resend.release()
        assert _wait_for(lambda: _seg_references(orthanc))
        extra = _next_slice(slices)  # a late new instance: the whole series again, a new revision
        late = _sender(orthanc.node_port)
        assert late.send_c_store(extra).Status == 0
        late.release()
        assert _wait_for(lambda: len(_seg_references(orthanc)) == 2)
    finally:
        _stop(restarted, thread)
    record = restarted.journal()[key]
    assert record["status"] == "ok" and record["revision"] == 2 and record["instances"] == len(slices) + 1
    assert sorted(_seg_references(orthanc)) == [len(slices), len(slices) + 1]


def test_unknown_ae_titles_are_refused(orthanc, predictor, tmp_path, caplog):  # noqa: F811
    node = _node(predictor, tmp_path, orthanc)
    thread = _run(node)
    try:
        known = _sender(orthanc.node_port)
        assert known.is_established
        known.release()
        stranger = _sender(orthanc.node_port, calling="STRANGER")
        wrong_called = _sender(orthanc.node_port, called="SOMEONEELSE")
        assert stranger.is_rejected and wrong_called.is_rejected
    finally:
        _stop(node, thread)
    assert "rejected an association from STRANGER at 127.0.0.1" in caplog.text


def test_a_full_spool_answers_out_of_resources(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    slices = _slices(tiny_dataset)
    node = _node(predictor, tmp_path, orthanc, limits=SpoolLimits(max_bytes=2 * slices[0].stat().st_size))
    thread = _run(node)
    try:
        assoc = _sender(orthanc.node_port)
        statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in slices[:4]]
        assoc.release()
    finally:
        _stop(node, thread)
    assert statuses[:2] == [0, 0] and set(statuses[2:]) == {OUT_OF_RESOURCES}
