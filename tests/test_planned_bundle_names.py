"""A planned bundle trained through ``clinseg train`` (``train_bundle``) is named after its own folder and
``metadata.json``: MLflow run ``<bundle>-<date>-<time>-<id>`` and the ``bundle.name`` param, never a config
file's name (an overlay such as ``multi_gpu_train.yaml`` once leaked into both)."""

from __future__ import annotations

import json
import re

import mlflow
import pytest
import torch

from pipeline.planning import plan as plan_module
from pipeline.planning.bundle_writer import write_planned_bundle
from pipeline.planning.compute import ComputeBudget
from pipeline.planning.plan import make_plan
from pipeline.training.train import train_bundle
from tests.planning_fixtures import fake_fingerprint, step_timing

torch.set_num_threads(1)


@pytest.fixture
def planned(tmp_path, monkeypatch, tiny_dataset):
    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    fingerprint = fake_fingerprint([1.6, 1.6, 2.5], [1.6, 1.6, 2.5], [48, 44, 16], {"image": "CT"},
                                   labels=("organ", "lesion"))  # fmt: skip
    plan = make_plan(fingerprint, ComputeBudget("cpu", 60.0), counts={"training": 3, "validation": 1}, dims="3d")
    return write_planned_bundle(tmp_path / "liver_plan", plan, fingerprint, tiny_dataset)


def test_planned_metadata_is_named_after_the_bundle(planned):
    meta = json.loads((planned / "configs" / "metadata.json").read_text())
    assert meta["name"] == "liver_plan"


@pytest.mark.slow
def test_planned_bundle_trains_under_its_own_name(planned, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train_bundle(
        planned, ckpt_dir=tmp_path / "run", tracking_uri=uri, max_epochs=1,
        overrides={"steps_per_epoch": 1, "val_interval": 1, "batch_size": 1, "samples_per_volume": 1,
                   "roi_size": [16, 16, 16], "network_args#channels": [4, 8], "log_run_artifacts": False},
    )  # fmt: skip
    assert re.fullmatch(r"liver_plan-\d{8}-\d{6}-[0-9a-f]{4}", result.run_name), result.run_name
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
    assert run.info.run_name == result.run_name
    assert run.data.params["bundle.name"] == "liver_plan"
