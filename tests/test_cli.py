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


def _commands():
    """``(name, parser)`` of the top-level parser and every sub-command."""
    import argparse

    from pipeline.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("clinseg", parser), *sub.choices.items()]


def test_every_argument_has_help_and_every_command_a_description():
    import argparse

    missing = []
    for name, parser in _commands():
        if not (parser.description or "").strip():
            missing.append(f"{name}: description")
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name}: {action.option_strings or action.dest}")
    assert missing == []


def test_help_shows_defaults_once():
    help_text = {name: parser.format_help() for name, parser in _commands()}
    assert "(default: 10)" in help_text["synth"]  # --cases
    assert "(default: validation)" in help_text["evaluate"]  # --split
    assert "(default: None)" not in "".join(help_text.values())
    assert "(default: False)" not in "".join(help_text.values())
    assert "(default: cuda when present) (default" not in help_text["predict"]
