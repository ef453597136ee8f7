"""Fault isolation and resumability: bad cases are reported and the batch goes on; reruns skip finished cases;
a run killed while writing leaves nothing a rerun takes as complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.atomic import COMPLETE_MARKER
from pipeline.batch.runner import predict_folder
from pipeline.outputs.registry import SEG_NAME, VOLUMES_NAME
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.batch.prefetch import prefetch
from tests.conftest import REPO
from tests.test_predictor import BUNDLE, random_checkpoint

ROI = (32, 32, 16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_bundle(BUNDLE, checkpoint, options=InferenceOptions(roi_size=ROI, device="cpu"))


@pytest.fixture(scope="module")
def mixed_source(tiny_dataset, tmp_path_factory):
    """Two good cases (NIfTI, DICOM), a tiny one-slice image, and five broken ones."""
    patients = tiny_dataset.parent / "patients"
    src = tmp_path_factory.mktemp("mixed")
    (src / "good_nifti").mkdir()
    shutil.copy(patients / "case_000" / "ct.nii.gz", src / "good_nifti" / "ct.nii.gz")
    shutil.copytree(patients / "case_001" / "ct_dicom", src / "good_dicom")
    (src / "tiny").mkdir()
    nib.save(
        nib.Nifti1Image(np.full((3, 4, 1), 40, np.int16), np.diag([2.0, 2.0, 5.0, 1.0])),
        src / "tiny" / "ct.nii.gz",
    )
    shutil.copytree(patients / "case_003" / "ct_dicom", src / "truncated_dicom")
    victim = sorted((src / "truncated_dicom").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:1500])
    (src / "empty").mkdir()
    (src / "mixed_series").mkdir()
    for case in ("case_004", "case_005"):
        for f in (patients / case / "ct_dicom").iterdir():
            shutil.copy(f, src / "mixed_series" / f"{case}_{f.name}")
    (src / "broken_nifti").mkdir()
    (src / "broken_nifti" / "ct.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (src / "two_images").mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(patients / "case_002" / "ct.nii.gz", src / "two_images" / name)
    return src


REASONS = {
    "truncated_dicom": "pixel data truncated",
    "empty": "no NIfTI image or DICOM files",
    "mixed_series": "ambiguous choice, 2 series",
    "broken_nifti": "ct.nii.gz",
    "two_images": "cannot choose the 'image' image",
}


def test_bad_cases_fail_with_their_reason_and_a_rerun_skips_the_good_ones(predictor, mixed_source, tmp_path):
    report = predict_folder(predictor, mixed_source, tmp_path, prefetch=2)
    status = {r.case: r for r in report.results}
    assert {c for c, r in status.items() if r.status == "ok"} == {"good_nifti", "good_dicom", "tiny"}
    for case, reason in REASONS.items():
        assert status[case].status == "failed"
        assert reason in status[case].error, status[case].error
        assert not (tmp_path / case / COMPLETE_MARKER).exists()
    assert report.exit_code() == 3
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["counts"] == {"ok": 3, "failed": 5, "skipped": 0} and saved["exit_code"] == 3
    tiny = nib.load(tmp_path / "tiny" / SEG_NAME)
    assert tiny.shape == (3, 4, 1)
    volumes_before = (tmp_path / "volumes.csv").read_text()

    again = predict_folder(predictor, mixed_source, tmp_path)
    status = {r.case: r.status for r in again.results}
    assert {c for c, s in status.items() if s == "skipped"} == {"good_nifti", "good_dicom", "tiny"}
    assert {c for c, s in status.items() if s == "failed"} == set(REASONS)
    assert (tmp_path / "volumes.csv").read_text() == volumes_before  # skipped cases keep their rows


def test_prefetch_attributes_errors_to_their_item_and_keeps_order():
    def load(x):
        if x % 3 == 0:
            raise ValueError(f"bad {x}")
        time.sleep(0.01 * (x % 2))
        return x * 10

    for ahead, workers in [(0, 1), (1, 1), (3, 2)]:
        got = list(prefetch(range(8), load, ahead=ahead, workers=workers))
        assert [g.item for g in got] == list(range(8))
        for g in got:
            assert (g.error is None) == (g.item % 3 != 0)
            assert g.value == (None if g.error else g.item * 10)
            assert g.error is None or str(g.error) == f"bad {g.item}"
    with pytest.raises(ValueError, match="ahead >= 0"):
        list(prefetch([1], load, ahead=-1))


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import pipeline.outputs.slab_volumes as co
from pipeline.batch.runner import predict_folder
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor

source, out, ckpt, flag = sys.argv[1:5]
real = co.structure_volumes
calls = []

def slow(*args, **kwargs):  # the second case stops right after its seg.nii.gz is on disk
    calls.append(1)
    if len(calls) == 2:
        Path(flag).write_text("writing")
        time.sleep(120)
    return real(*args, **kwargs)

co.structure_volumes = slow
co.SLAB = 10**6  # one structure_volumes call per case
predictor = Predictor.from_bundle(sys.argv[5], ckpt, options=InferenceOptions(roi_size=(32, 32, 16), device="cpu"))
predict_folder(predictor, source, out, prefetch=1)
"""


def test_a_run_killed_while_writing_leaves_no_case_that_looks_complete(
    tiny_dataset, checkpoint, predictor, tmp_path
):
    patients = tiny_dataset.parent / "patients"
    source = tmp_path / "src"
    for case in ("case_000", "case_001", "case_002"):
        (source / case).mkdir(parents=True)
        shutil.copy(patients / case / "ct.nii.gz", source / case / "ct.nii.gz")
    out, flag = tmp_path / "out", tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        sys.executable,
        "-c",
        _KILL_SCRIPT,
        str(source),
        str(out),
        str(checkpoint),
        str(flag),
        str(BUNDLE),
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 50
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it was killed: {proc.stdout.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach the second case in time")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (out / "case_000" / COMPLETE_MARKER).exists()
    assert (out / "case_001" / SEG_NAME).exists()  # half-done: mask written, volumes not
    assert not (out / "case_001" / VOLUMES_NAME).exists()
    assert not (out / "case_001" / COMPLETE_MARKER).exists()

    rerun = predict_folder(predictor, source, out)
    status = {r.case: r.status for r in rerun.results}
    assert status == {"case_000": "skipped", "case_001": "ok", "case_002": "ok"}
    for case in status:
        assert (out / case / COMPLETE_MARKER).exists()
        assert not list((out / case).glob(".tmp-*"))
