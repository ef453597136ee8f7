"""``clinseg serve`` killed with SIGKILL mid-series (issue 26): the real CLI in a subprocess receives 20 of a
40-slice series from a pynetdicom sender, is killed, restarted past its quiet time, and gets all 40 again. No
result may be made of the 20; the one result covers 40 slices and is pushed to Orthanc once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from pipeline.pacs.cache import case_key
from pipeline.synthetic.dicom_series import write_dicom_series
from tests.orthanc_server import NODE_AET, orthanc  # noqa: F401
from tests.test_predictor import BUNDLE, random_checkpoint
from tests.orthanc_server import wait_for
from tests.test_serve_orthanc import CT, _seg_references

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SLICES, SENT_BEFORE_KILL = 40, 20
QUIET, SETTLE = 2, 2


def _association(port: int, seconds: float = 180):
    """An association to the node, retried while it starts (imports, model loading)."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
        if assoc.is_established:
            return assoc
        time.sleep(0.5)
    raise AssertionError(f"the node did not accept an association on port {port} within {seconds} s")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _journal(spool: Path) -> list[dict]:
    path = spool / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_node_killed_mid_series_and_restarted_never_segments_the_part(orthanc, tmp_path):  # noqa: F811
    orthanc.clear()
    paths = write_dicom_series(np.zeros((32, 32, SLICES)), np.diag([1.0, 1.0, 2.5, 1.0]), tmp_path / "series",
                               uid_seed="sigkill")  # fmt: skip
    key = case_key(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID))
    spool, out, log = tmp_path / "spool", tmp_path / "out", tmp_path / "serve.log"
    args = [str(BUNDLE), "--checkpoint", str(random_checkpoint(tmp_path / "model.pt")), "--device", "cpu",
            "--roi-size", "32", "32", "16", "--no-preview", "--spool", str(spool), "--output", str(out),
            "--port", str(orthanc.node_port), "--ae-title", NODE_AET, "--allow-aet", "SENDER",
            "--quiet-seconds", str(QUIET), "--settle-seconds", str(SETTLE), "--push-to", f"dimse:{orthanc.dimse}",
            "--calling-aet", NODE_AET]  # fmt: skip
    node = _start(args, log)
    try:
        assoc = _association(orthanc.node_port)
        assert {assoc.send_c_store(pydicom.dcmread(p)).Status for p in paths[:SENT_BEFORE_KILL]} == {0}
        node.send_signal(signal.SIGKILL)  # mid-series: the association is still open
        node.wait(timeout=30)
        assoc.abort()
        assert len(list((spool / "incoming" / key).glob("*.dcm"))) == SENT_BEFORE_KILL
        node = _start(args, log)
        _association(orthanc.node_port).release()  # listening again
        time.sleep(QUIET + SETTLE + 2)  # past the quiet and settle times of the restarted node
        assert _journal(spool) == [] and not (out / key / "seg.nii.gz").exists()
        assert not _seg_references(orthanc) and not (out / "report.json").exists()
        resend = _association(orthanc.node_port)
        assert {resend.send_c_store(pydicom.dcmread(p)).Status for p in paths} == {0}
        resend.release()
        assert wait_for(lambda: any(r["case"] == key for r in _journal(spool)))
    finally:
        node.terminate()
        node.wait(timeout=30)
    records = [r for r in _journal(spool) if r["case"] == key]
    assert [r["instances"] for r in records] == [SLICES], log.read_text()[-2000:]
    (record,) = records  # no count was knowable: provisional, never ok of a part
    assert record["status"] == "provisional" and record["push"] == "pushed" and record["revision"] == 1
    assert nib.load(out / key / "seg.nii.gz").shape[2] == SLICES
    assert _seg_references(orthanc) == [SLICES]
    (case,) = json.loads((out / "report.json").read_text())["cases"]
    assert case["status"] == "ok" and any(w.startswith("provisional:") for w in case["warnings"])
