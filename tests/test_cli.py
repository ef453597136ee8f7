"""The clinseg command line maps flags onto the library: synth, inspect, convert, and clear failures."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from pipeline.cli import main
from tests.conftest import BUNDLES


def test_synth_inspect_and_convert_round_trip(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--cases", "3", "--seed", "1", "--format", "both"]) == 0
    dataset = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert dataset["numTraining"] + dataset["numValidation"] + dataset["numTest"] == 3
    case = tmp_path / "d" / "patients" / "case_002"  # oblique

    capsys.readouterr()
    assert main(["inspect", str(case / "ct_dicom"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["modality"] == "CT" and not rows[0]["problems"]

    out = tmp_path / "converted.nii.gz"
    assert main(["convert", str(case / "ct_dicom"), str(out)]) == 0
    converted, original = nib.load(out), nib.load(case / "ct.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(converted.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(converted.affine, original.affine, atol=1e-4)


def test_errors_are_reported_with_exit_code_2(tmp_path, caplog, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "missing" in caplog.text
    assert main(["predict", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "is not a MONAI bundle" in caplog.text
    assert main(["train", str(BUNDLES / "ct_organ_resunet3d"), "--dataset-dir", str(tmp_path), "--epochs", "1",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2  # fmt: skip
    # a bundle's logging.conf sends the log to stdout (replacing the root handler pytest's caplog uses)
    assert "dataset.json does not exist" in caplog.text + capsys.readouterr().out
