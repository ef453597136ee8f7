"""``clinseg serve`` never segments half a series (issue 26), against a real Orthanc and a pynetdicom sender:
a sender pausing longer than the quiet time (within one association, or between two with the count known from
the headers, the archive, slice gaps or not at all), a node stopped mid-series and restarted before the resend,
unknown AE titles refused, a full spool rejecting associations and answering 0xA700, pruning and ``stale``,
and a wrong password's push failure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from pipeline.pacs.cache import case_key
from pipeline.pacs.connect import open_archive
from pipeline.pacs.credentials import ENV_PASSWORD, ENV_USER, load_credentials
from pipeline.pacs.dimse import DimseArchive
from pipeline.pacs.serve import OUT_OF_RESOURCES, ServeOptions, StorageNode
from pipeline.pacs.spool import RECEIVING, SpoolLimits
from tests.orthanc_server import NODE_AET, USER, orthanc, thread_frames, wait_for  # noqa: F401
from tests.test_pacs_orthanc import CASES, _results_in_orthanc, _series_uid, ckpt, predictor  # noqa: F401

pytestmark = pytest.mark.slow

CT = "1.2.840.10008.5.1.4.1.1.2"
QUIET, SETTLE = 1.0, 3.0


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


def _node(predictor, tmp_path, orthanc, push_to=None, **kwargs):  # noqa: F811
    options = ServeOptions(ae_title=NODE_AET, port=orthanc.node_port, quiet_seconds=QUIET, poll_seconds=0.2,
                           allow_aets=("SENDER",), settle_seconds=SETTLE)  # fmt: skip
    push_to = push_to or DimseArchive.parse(orthanc.dimse, calling_aet=NODE_AET)
    return StorageNode(predictor, tmp_path / "spool", tmp_path / "out", push_to=push_to, options=options, **kwargs)


def _state(node: StorageNode, thread: threading.Thread) -> str:
    """What the node holds and where its thread is: a failed wait's message."""
    series = {k[:8]: (s.pending, len(s.senders), s.interrupted) for k, s in node.spool.series.items()}
    return (
        f"journal {node.journal()}; series (pending, senders, interrupted) {series}; waiting {node._waiting}; "
        f"node thread: {thread_frames(thread)}"
    )


def _send(port: int, datasets) -> list[int]:
    """C-STORE ``datasets`` (paths or datasets) on one new association, released; the statuses."""
    assoc = _sender(port)
    statuses = [assoc.send_c_store(pydicom.dcmread(d) if isinstance(d, Path) else d).Status for d in datasets]
    assoc.release()
    return statuses


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
        assert wait_for(lambda: _seg_references(orthanc), explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    key = case_key(_series_uid(slices[0].parent)[1])
    record = node.journal()[key]  # nothing told the count: provisional, after the settle time
    assert record["status"] == "provisional" and record["instances"] == len(slices) and record["push"] == "pushed"
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
        assert wait_for(lambda: _seg_references(orthanc), explain=lambda: _state(restarted, thread))
        extra = _next_slice(slices)  # a late new instance: the whole series again, a new revision
        late = _sender(orthanc.node_port)
        assert late.send_c_store(extra).Status == 0
        late.release()
        assert wait_for(lambda: len(_seg_references(orthanc)) == 2, explain=lambda: _state(restarted, thread))
    finally:
        _stop(restarted, thread)
    record = restarted.journal()[key]
    assert record["status"] == "provisional" and record["revision"] == 2 and record["instances"] == len(slices) + 1
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


def test_a_release_then_a_pause_within_the_settle_time_gets_one_whole_series(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    half = len(slices) // 2
    node = _node(predictor, tmp_path, orthanc)
    thread = _run(node)
    try:
        assert set(_send(orthanc.node_port, slices[:half])) == {0}
        time.sleep(QUIET + 1)  # past the quiet time, within the settle time: the count is unknown, it settles
        assert node.journal() == {} and not _seg_references(orthanc)
        assert set(_send(orthanc.node_port, slices[half:])) == {0}  # the rest, on a new association
        assert wait_for(lambda: _seg_references(orthanc), explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    (record,) = node.journal().values()
    assert record["status"] == "provisional" and record["instances"] == len(slices) and record["revision"] == 1
    assert _seg_references(orthanc) == [len(slices)]


def test_a_pause_past_the_settle_time_is_provisional_and_the_rest_supersedes_it(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    half = len(slices) // 2
    key = case_key(_series_uid(slices[0].parent)[1])
    node = _node(predictor, tmp_path, orthanc)
    thread = _run(node)
    try:
        assert set(_send(orthanc.node_port, slices[:half])) == {0}
        # nothing can tell these are half a series
        assert wait_for(lambda: key in node.journal(), explain=lambda: _state(node, thread))
        first = node.journal()[key]
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert set(_send(orthanc.node_port, slices[half:])) == {0}
        assert wait_for(lambda: len(_seg_references(orthanc)) == 2, explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    assert first["status"] == "provisional" and first["instances"] == half and "unverified" in first["count"]
    (case,) = report["cases"]
    assert any(w.startswith("provisional:") for w in case["warnings"])
    record = node.journal()[key]  # the late half: the whole series again, superseding, pushed again
    assert record["status"] == "provisional" and record["revision"] == 2 and record["instances"] == len(slices)
    assert record["push"] == "pushed" and sorted(_seg_references(orthanc)) == [half, len(slices)]
    assert nib.load(tmp_path / "out" / key / "seg.nii.gz").shape[2] == len(slices)


def _with(path: Path, **tags) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("hint", ["NumberOfSeriesRelatedInstances", "ImagesInAcquisition", "archive", "gap"])
def test_a_known_count_or_a_slice_gap_holds_a_released_part_series(orthanc, tiny_dataset, predictor, tmp_path, hint):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    n, key = len(slices), case_key(_series_uid(slices[0].parent)[1])
    count_from = None
    if hint == "archive":  # the archive already holds the series: its listing gives the count
        orthanc.upload(slices)
        count_from = DimseArchive.parse(orthanc.dimse, calling_aet=NODE_AET)
    tags = {hint: n} if hint.startswith(("Number", "Images")) else {}
    first = [_with(p, **tags) for p in slices]
    first, rest = (first[:4] + first[6:], first[4:6]) if hint == "gap" else (first[: n // 2], first[n // 2 :])
    node = _node(predictor, tmp_path, orthanc, count_from=count_from)
    thread = _run(node)
    try:
        assert set(_send(orthanc.node_port, first)) == {0}
        time.sleep(QUIET + SETTLE + 2)  # past the quiet and the settle time: still held
        assert node.journal() == {} and not _seg_references(orthanc)
        waiting = node._waiting[key]
        assert set(_send(orthanc.node_port, rest)) == {0}
        assert wait_for(lambda: key in node.journal(), explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    expected = {"archive": f"({count_from.label if count_from else ''}'s series listing)",
                "gap": "2 slice positions missing"}.get(hint, f"(the sender's {hint})")  # fmt: skip
    assert expected in waiting
    record = node.journal()[key]
    assert record["instances"] == n and record["status"] == ("provisional" if hint == "gap" else "ok")


def test_a_full_spool_rejects_new_associations(orthanc, tiny_dataset, predictor, tmp_path, caplog):  # noqa: F811
    slices = _slices(tiny_dataset)
    node = _node(predictor, tmp_path, orthanc, limits=SpoolLimits(max_bytes=2 * slices[0].stat().st_size))
    thread = _run(node)
    try:
        statuses = _send(orthanc.node_port, slices[:3])  # this association fills the spool mid-way: 0xA700
        refused = _sender(orthanc.node_port)
    finally:
        _stop(node, thread)
    assert statuses == [0, 0, OUT_OF_RESOURCES] and refused.is_rejected
    rj = refused.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
    assert "rejected an association from SENDER at 127.0.0.1" in caplog.text and "its limit is" in caplog.text


def test_a_safe_result_is_pruned_duplicates_dropped_and_a_late_instance_is_stale(orthanc, tiny_dataset, predictor, tmp_path):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    key = case_key(_series_uid(slices[0].parent)[1])
    folder = tmp_path / "spool" / "incoming" / key
    node = _node(predictor, tmp_path, orthanc, limits=SpoolLimits(keep_seconds=0))
    thread = _run(node)
    try:
        assert set(_send(orthanc.node_port, slices)) == {0}
        # pushed, then pruned
        assert wait_for(lambda: node.spool.processed(key).get("pruned"), explain=lambda: _state(node, thread))
        assert not list(folder.glob("*.dcm")) and node.journal()[key]["push"] == "pushed"
        assert set(_send(orthanc.node_port, slices)) == {0}  # a resend of the same instances
        # duplicates dropped, nothing reprocessed
        assert wait_for(lambda: not list(folder.glob("*.dcm")), explain=lambda: _state(node, thread))
        assert node.journal()[key]["revision"] == 1
        assert _send(orthanc.node_port, [_next_slice(slices)]) == [0]
        assert wait_for(lambda: node.journal()[key]["status"] == "stale", explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    assert "1 late instances arrived after the series' instances were pruned" in node.journal()[key]["error"]
    assert _seg_references(orthanc) == [len(slices)]


@pytest.mark.parametrize("source", ["environment", "file"])
def test_a_wrong_password_fails_the_push_naming_the_source_not_the_secret(orthanc, tiny_dataset, predictor, tmp_path, monkeypatch, caplog, source):  # noqa: F811
    orthanc.clear()
    slices = _slices(tiny_dataset)
    secret = "not-the-password-42"
    if source == "file":
        path = tmp_path / "pacs.json"
        path.write_text(json.dumps({"username": USER, "password": secret}))
        credentials, named = load_credentials(path), f"--credentials file {path}"
    else:
        credentials = load_credentials(environ={ENV_USER: USER, ENV_PASSWORD: secret})
        named = f"{ENV_USER}/{ENV_PASSWORD}"
    push_to = open_archive(f"dicomweb:{orthanc.dicomweb}", credentials=credentials)
    node = _node(predictor, tmp_path, orthanc, push_to=push_to)
    thread = _run(node)
    try:
        assert set(_send(orthanc.node_port, slices)) == {0}
        assert wait_for(lambda: node.journal(), explain=lambda: _state(node, thread))
    finally:
        _stop(node, thread)
    (record,) = node.journal().values()
    assert record["push"] == "failed" and "HTTP 401" in record["push_error"]
    assert f"refused the credentials from {named}" in record["push_error"]
    spool_text = (tmp_path / "spool" / "journal.jsonl").read_text()
    assert secret not in spool_text + caplog.text + (tmp_path / "out" / "report.json").read_text()
