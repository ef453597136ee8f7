"""Inference backends: each one's labels agree with torch float32, the ONNX export is cached and invalidated,
an unavailable backend falls back to torch with one warning, and --backend / --layout map through the CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from pipeline.batch.runner import predict_folder
from pipeline.cli.inference_flags import add_inference_options, inference_options
from pipeline.inference import backend_choice, onnx_export
from pipeline.inference.backend_choice import fastest
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from tests.test_predictor import BUNDLE, random_checkpoint

ROI = (32, 32, 16)
OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
ORT = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def _cache_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINSEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def _predictor(checkpoint, **changes) -> Predictor:
    """float32 unless ``changes`` say otherwise (AMP's default is on for CPUs with native bfloat16)."""
    options = InferenceOptions(**{"roi_size": ROI, "device": "cpu", "uncertainty": False, "amp": False, **changes})
    return Predictor.from_bundle(BUNDLE, checkpoint, options=options)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(x, y).sum() / total


@pytest.mark.parametrize(
    "changes",
    [
        {"backend": "torch", "layout": "channels_last"},
        pytest.param({"backend": "onnxruntime"}, marks=ORT),
        pytest.param({"backend": "openvino"}, marks=OPENVINO),
        pytest.param({"backend": "auto"}, marks=ORT),
    ],
    ids=["channels_last", "onnxruntime", "openvino", "auto"],
)
def test_backend_labels_agree_with_torch_float32(tiny_dataset, checkpoint, changes):
    case = tiny_dataset.parent / "patients" / "case_001" / "ct.nii.gz"
    reference = _predictor(checkpoint, backend="torch", layout="contiguous")
    assert reference.backend.name == "torch"
    predictor = _predictor(checkpoint, **changes)
    assert predictor.backend.fallback == ""
    if changes["backend"] != "auto":
        assert predictor.backend.name == changes["backend"].replace("torch", "torch-channels_last")
    expected = reference.predict(case).labels.numpy()
    labels = predictor.predict(case).labels.numpy()
    for label in (1, 2):
        assert _dice(labels, expected, label) >= 0.999, f"label {label}"


@ORT
def test_export_is_reused_and_redone_when_the_weights_change(tmp_path, checkpoint, monkeypatch):
    exports = []
    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (exports.append(1), export(*a, **k))[1])
    _predictor(checkpoint, backend="onnxruntime")
    cached = sorted((tmp_path / "cache" / "exports").glob("*.onnx"))
    assert len(exports) == 1 and len(cached) == 1
    _predictor(checkpoint, backend="onnxruntime")
    assert len(exports) == 1, "the second Predictor re-exported"
    _predictor(random_checkpoint(tmp_path / "other.pt", seed=1), backend="onnxruntime")
    assert len(exports) == 2 and len(list((tmp_path / "cache" / "exports").glob("*.onnx"))) == 2
    _predictor(checkpoint, backend="onnxruntime", sw_batch_size=2)  # another patch batch: another export
    assert len(exports) == 3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_unavailable_backend_falls_back_to_torch_with_one_warning(checkpoint, monkeypatch, backend):
    def broken(*args, **kwargs):
        raise ImportError(f"No module named '{backend}'")

    monkeypatch.setitem(backend_choice._RUNTIMES, backend, broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = _predictor(checkpoint, backend=backend)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and backend in str(w.message)]
    assert len(ours) == 1 and "running the network in torch" in str(ours[0].message)
    assert predictor.backend.name.startswith("torch")
    assert "ImportError" in predictor.backend_info()["fallback"]


def test_failing_export_falls_back_to_torch(checkpoint, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", failing)
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        predictor = _predictor(checkpoint, backend="onnxruntime")
    assert predictor.backend.name.startswith("torch")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backend": "onnxruntime", "amp": True}, "AMP is the torch backend's"),
        ({"backend": "tensorrt"}, "backend must be"),
        ({"layout": "nhwc"}, "layout must be"),
    ],
)
def test_bad_backend_options_are_errors(checkpoint, changes, message):
    with pytest.raises(ValueError, match=message):
        _predictor(checkpoint, **changes)


def test_auto_layout_is_measured_and_reported(tiny_dataset, checkpoint, tmp_path):
    predictor = _predictor(checkpoint)
    info = predictor.backend_info()
    assert set(info["timings_ms"]) == {"torch", "torch-channels_last"}
    assert info["backend"] == min(info["timings_ms"], key=info["timings_ms"].get)
    assert predictor.settings()["backend"] == "torch" and predictor.settings()["layout"] == "auto"
    source = tmp_path / "in" / "case_000"
    source.mkdir(parents=True)
    (source / "ct.nii.gz").write_bytes((tiny_dataset.parent / "patients" / "case_000" / "ct.nii.gz").read_bytes())
    predict_folder(predictor, tmp_path / "in", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["run"]["inference_backend"]["backend"] == info["backend"]


def test_fastest_takes_the_quickest_runner():
    x = torch.zeros(1)
    slow = lambda t: (torch.ones(200, 200) @ torch.ones(200, 200), t)[1]  # noqa: E731
    name, timings = fastest({"slow": slow, "quick": lambda t: t}, x, rounds=2)
    assert name == "quick" and timings["quick"] <= timings["slow"]


@pytest.mark.parametrize("flags, backend, layout", [([], None, None), (["--backend", "openvino"], "openvino", None),
                                                     (["--backend", "auto", "--layout", "contiguous"], "auto", "contiguous")])  # fmt: skip
def test_cli_flags_map_to_options(flags, backend, layout):
    parser = argparse.ArgumentParser()
    add_inference_options(parser)
    options, _ = inference_options(parser.parse_args(flags))
    assert (options.backend, options.layout) == (backend, layout)


@ORT
def test_clinseg_predict_backend_flag_reaches_the_report(tiny_dataset, checkpoint, tmp_path):
    from pipeline.cli import main

    source = tmp_path / "in" / "case_000"
    source.mkdir(parents=True)
    (source / "ct.nii.gz").write_bytes((tiny_dataset.parent / "patients" / "case_000" / "ct.nii.gz").read_bytes())
    argv = ["predict", str(BUNDLE), "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "out"), "--device", "cpu", "--roi-size", *map(str, ROI), "--no-amp",
            "--backend", "onnxruntime", "--no-uncertainty"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["run"]["inference_backend"]["backend"] == "onnxruntime"
    assert report["run"]["backend"] == "onnxruntime"
