"""Prediction lands on each input's own grid (shape and affine), for NIfTI and DICOM, oblique included."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import networks
from pipeline.batch.runner import predict_folder
from pipeline.outputs.registry import SEG_NAME
from pipeline.core.checkpoint import NetworkSpec
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.conftest import BUNDLES
from transforms.io.scan import load_scan

BUNDLE = BUNDLES / "ct_organ_resunet3d"
NET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16, 32]}


def random_checkpoint(path, seed: int = 0):
    """A random-weight checkpoint of the tiny test network (records its network spec)."""
    torch.manual_seed(seed)
    spec = NetworkSpec("res_unet", NET_ARGS)
    torch.save({"model": spec.build().state_dict(), "network": spec.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_bundle(BUNDLE, checkpoint, options=InferenceOptions(roi_size=(32, 32, 16), device="cpu"))


def _oblique_case(dataset_json):
    content = json.loads(dataset_json.read_text())
    entries = [e for split in ("training", "validation", "test") for e in content[split]]
    return next(e for e in entries if e["case"] == "case_002")  # every third case is oblique


@pytest.mark.parametrize("key", ["image", "ct_dicom"])
def test_prediction_has_input_shape_and_affine(tiny_dataset, predictor, key):
    entry = _oblique_case(tiny_dataset)
    path = tiny_dataset.parent / entry[key]
    loaded = load_scan(path)
    assert np.count_nonzero(np.abs(loaded.affine.numpy()[:3, :3]) > 1e-6) > 3, "case must be oblique"
    seg = predictor.predict(path).labels
    assert seg.shape == loaded.shape
    assert seg.dtype == torch.uint8
    np.testing.assert_allclose(seg.affine.numpy(), loaded.affine.numpy(), atol=1e-5)
    assert set(np.unique(seg.numpy())) <= {0, 1, 2}


def test_predict_folder_writes_seg_on_input_grid_and_skips_on_rerun(tiny_dataset, predictor, tmp_path):
    patients = tiny_dataset.parent / "patients"
    report = predict_folder(predictor, patients, tmp_path)
    assert report.counts() == {"ok": 6, "failed": 0, "skipped": 0}
    for case_dir in sorted(patients.iterdir()):
        seg = nib.load(tmp_path / case_dir.name / SEG_NAME)
        ct = nib.load(case_dir / "ct.nii.gz")
        assert seg.shape == ct.shape
        np.testing.assert_allclose(seg.affine, ct.affine, atol=1e-5)
    again = predict_folder(predictor, patients, tmp_path)
    assert again.counts() == {"ok": 0, "failed": 0, "skipped": 6}


def test_bad_case_is_reported_and_the_batch_goes_on(tiny_dataset, predictor, tmp_path):
    source = tmp_path / "in"
    good = source / "good"
    good.mkdir(parents=True)
    (good / "ct.nii.gz").write_bytes((tiny_dataset.parent / "patients" / "case_000" / "ct.nii.gz").read_bytes())
    (source / "broken").mkdir()
    (source / "broken" / "ct.nii.gz").write_bytes(b"not a nifti file")
    (source / "empty").mkdir()
    report = predict_folder(predictor, source, tmp_path / "out")
    status = {r.case: r for r in report.results}
    assert status["good"].status == "ok"
    assert status["broken"].status == "failed" and "ct.nii.gz" in status["broken"].error
    assert status["empty"].status == "failed" and "no NIfTI image or DICOM" in status["empty"].error
    assert report.exit_code() == 3
    assert not (tmp_path / "out" / "broken" / SEG_NAME).exists()


def test_predictor_requires_an_existing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Predictor.from_bundle(BUNDLE, tmp_path / "missing.pt")


def test_checkpoint_for_another_network_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    net = networks.build_network("res_unet", **{**NET_ARGS, "channels": [4, 8]})
    torch.save({"model": net.state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit the bundle's network_def"):
        Predictor.from_bundle(BUNDLE, path)
