"""``--backend auto`` measures once and records its choice: later Predictors build only the recorded backend; a new
checkpoint, thread count or an unreadable record measures again."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from pipeline.inference import backend_choice
from pipeline.inference.backend_record import choice_key
from pipeline.inference.onnx_export import export_cache_dir
from tests.test_backends import ROI, _cache_and_threads, _predictor, checkpoint  # noqa: F401 - fixtures
from tests.test_predictor import random_checkpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")


def _no_measuring(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("auto measured although a choice was recorded")

    monkeypatch.setattr(backend_choice, "fastest", refuse)


def test_auto_records_its_choice_and_the_next_predictor_builds_only_it(checkpoint, monkeypatch):
    first = _predictor(checkpoint, backend="auto").backend_info()
    assert not first["recorded"] and first["timings_ms"]
    entries = json.loads((export_cache_dir() / "backend_choices.json").read_text())
    assert [e["backend"] for e in entries.values()] == [first["backend"]]
    _no_measuring(monkeypatch)
    built = []
    original = backend_choice._runtime_runners
    monkeypatch.setattr(backend_choice, "_runtime_runners", lambda name, *a: built.append(name) or original(name, *a))
    second = _predictor(checkpoint, backend="auto").backend_info()
    assert second["recorded"] and second["backend"] == first["backend"]
    assert second["timings_ms"] == first["timings_ms"]
    assert set(built) <= {first["backend"]}  # the losing runtimes are never loaded


def test_a_new_checkpoint_or_thread_count_is_measured_again(checkpoint, tmp_path):
    from pipeline.core.checkpoint import network_from_checkpoint

    a = network_from_checkpoint(checkpoint)
    b = network_from_checkpoint(random_checkpoint(tmp_path / "other.pt", seed=1))
    patch = (1, 1, *ROI)
    key = choice_key(a, patch, amp=False, layout="auto")
    assert key != choice_key(b, patch, amp=False, layout="auto")
    assert key != choice_key(a, patch, amp=True, layout="auto")
    torch.set_num_threads(2)
    try:
        assert key != choice_key(a, patch, amp=False, layout="auto")
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"x": {"backend": "torch"}}), json.dumps([1, 2])])
def test_an_unreadable_or_foreign_record_measures_again(checkpoint, content):
    export_cache_dir().mkdir(parents=True)
    (export_cache_dir() / "backend_choices.json").write_text(content)
    info = _predictor(checkpoint, backend="auto").backend_info()
    assert not info["recorded"] and info["timings_ms"]
    entries = json.loads((export_cache_dir() / "backend_choices.json").read_text())
    assert info["backend"] in [e["backend"] for e in entries.values()]


def test_a_recorded_runtime_that_no_longer_loads_measures_again(checkpoint, monkeypatch):
    first = _predictor(checkpoint, backend="auto").backend_info()
    path = export_cache_dir() / "backend_choices.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps({k: {**v, "backend": "onnxruntime"} for k, v in entries.items()}))

    def broken(*args, **kwargs):
        raise RuntimeError("library gone")

    monkeypatch.setitem(backend_choice._RUNTIMES, "onnxruntime", broken)
    info = _predictor(checkpoint, backend="auto").backend_info()
    assert not info["recorded"] and info["backend"] != "onnxruntime" and first["timings_ms"]


def test_an_explicit_backend_neither_reads_nor_writes_the_record(checkpoint):
    info = _predictor(checkpoint, backend="torch").backend_info()
    assert not info["recorded"]
    assert not (export_cache_dir() / "backend_choices.json").exists()
