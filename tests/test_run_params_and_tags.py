"""Run params a person reads (the knobs and the config's digest) and the code version tags of a run."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from pipeline.tracking import run_tags as run_tags_module
from pipeline.tracking.run_tags import run_page_url, run_tags
from pipeline.tracking.store import experiment_params
from tests.conftest import REPO


def test_params_are_the_knobs_and_the_config_digest(tmp_path):
    config = tmp_path / "config_run.json"
    config.write_text(json.dumps({"train": {"handlers": [{"_target_": f"H{i}"} for i in range(300)]}}))
    params = experiment_params({"name": "b", "version": "1"}, config_file=config, roi_size=(96, 96, 64), lr=0.003)
    assert params == {
        "bundle.name": "b", "bundle.version": "1", "roi_size": "[96, 96, 64]", "lr": "0.003",
        "config.sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
    }  # fmt: skip


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("bundle_in_git", [True, False])
def test_git_commit_is_clinsegs_own_wherever_the_bundle_is(tmp_path, bundle_in_git):
    tags = run_tags({"name": "b"}, bundle_root=REPO / "bundles" if bundle_in_git else tmp_path)
    assert tags["git.commit"].startswith(_head())  # never "unknown" for a bundle outside git
    assert ("bundle.git_commit" in tags) == bundle_in_git
    assert "unknown" not in tags.values()


def test_unknown_commit_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(run_tags_module, "_PACKAGE_ROOT", tmp_path)  # clinseg installed, not from git
    monkeypatch.setattr(run_tags_module.importlib.metadata, "distribution", _no_vcs_distribution)
    tags = run_tags({"name": "b"}, bundle_root=tmp_path)
    assert "git.commit" not in tags and "bundle.git_commit" not in tags


def _no_vcs_distribution(name: str):
    class Dist:
        version = "0.1.0"

        def read_text(self, file: str) -> str:
            return json.dumps({"url": "file:///somewhere", "dir_info": {}})

    return Dist()


def test_installed_from_git_commit_comes_from_pip_records(tmp_path, monkeypatch):
    class Dist:
        version = "0.1.0"

        def read_text(self, file: str) -> str:
            return json.dumps({"url": "https://x/clinseg.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}})

    monkeypatch.setattr(run_tags_module, "_PACKAGE_ROOT", tmp_path)
    monkeypatch.setattr(run_tags_module.importlib.metadata, "distribution", lambda name: Dist())
    assert run_tags({"name": "b"})["git.commit"] == "abc123"


@pytest.mark.parametrize(
    ("uri", "run_id", "expected"),
    [
        ("http://h:5000/", None, "http://h:5000/#/experiments/3?workflowType=machine_learning"),
        ("https://h", "r1", "https://h/#/experiments/3/runs/r1?workflowType=machine_learning"),
        ("sqlite:////tmp/mlflow.db", "r1", None),
    ],
)
def test_run_page_links_open_the_model_training_view(uri, run_id, expected):
    assert run_page_url(uri, "3", run_id) == expected
