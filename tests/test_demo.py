"""The main job end to end on tiny phantoms: data, checkpoints, MLflow store, predictions, printed summary."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.demo import run_demo, venv_command
from tests.conftest import TINY_SHAPE


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", cases=5, max_epochs=1, shape=TINY_SHAPE,
                      overrides={"roi_size": [32, 32, 16], "val_interval": 1})  # fmt: skip
    out = capsys.readouterr().out
    assert "clinseg demo finished" in out
    assert f"{venv_command('mlflow')} ui --backend-store-uri sqlite:///" in out
    assert f"{venv_command('clinseg', 'pipeline.cli')} evaluate " in out
    assert "validation Dice" in out and "organ" in out
    assert result.best_checkpoint.is_file() and result.run_id
    assert (tmp_path / "demo" / "mlflow.db").is_file()
    dataset = json.loads((tmp_path / "demo" / "data" / "dataset.json").read_text())
    for entry in dataset["test"]:
        seg = nib.load(tmp_path / "demo" / "predictions" / entry["case"] / "seg.nii.gz")
        ct = nib.load(tmp_path / "demo" / "data" / entry["image"])
        assert seg.shape == ct.shape
        np.testing.assert_allclose(seg.affine, ct.affine, atol=1e-5)


def test_printed_commands_name_the_environments_executables(tmp_path, monkeypatch):
    """Commands the demo prints run without activating the venv: scripts beside the interpreter, by full path."""
    import sys

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "mlflow").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert venv_command("mlflow") == str(bin_dir / "mlflow")
    assert venv_command("clinseg", "pipeline.cli") == f"{bin_dir / 'python'} -m pipeline.cli"
