"""The clinseg command line maps flags onto the library: synth, inspect, convert, and clear failures."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
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


def _run_cli(*argv: str, code: str | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "pipeline.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=120)


def test_a_missing_path_is_named_by_python_m_pipeline_cli(tmp_path):
    missing = tmp_path / "nonexistent"
    done = _run_cli("inspect", str(missing))
    assert done.returncode == 2
    assert str(missing) in done.stderr and "does not exist" in done.stderr


def test_parsing_and_checks_import_no_torch_or_monai(tmp_path):
    code = (
        "import sys\n"
        "from pipeline.cli import build_parser\n"
        "from pipeline.cli.common import check_arguments\n"
        f"args = build_parser().parse_args(['predict', {str(tmp_path)!r}, '--input', {str(tmp_path)!r}, "
        "'--output', 'o'])\n"
        "try:\n    check_arguments(args)\nexcept ValueError as e:\n    print('refused:', e)\n"
        "print('heavy:', sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
    )
    done = _run_cli(code=code)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout and "is not a MONAI bundle" in done.stdout


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_output_flags_come_from_the_registry(command):
    from pipeline.cli import build_parser
    from pipeline.cli.common import output_options
    from pipeline.outputs.registry import OUTPUTS, OutputOptions

    base = {"predict": ["predict", "b", "--output", "o"], "serve": ["serve", "b", "--spool", "s", "--output", "o"]}
    parser = build_parser()
    assert output_options(parser.parse_args(base[command])) == OutputOptions()
    for spec in (s for s in OUTPUTS if s.default is not None):
        options = output_options(parser.parse_args([*base[command], spec.flag]))
        assert getattr(options, spec.name) is (not spec.default)


@pytest.mark.parametrize("layout, strip", [("flat", []), ("case", ["--strip-channel-suffix"])])
def test_predict_takes_a_single_file_and_writes_the_flat_layout(tiny_dataset, tmp_path, layout, strip):
    import shutil

    import torch

    from tests.test_predictor import BUNDLE, random_checkpoint

    torch.set_num_threads(1)
    case = json.loads(tiny_dataset.read_text())["test"][0]["case"]
    scan = tmp_path / "in" / f"{case}_0000.nii.gz"  # nnU-Net's name of channel 0
    scan.parent.mkdir()
    shutil.copy(tiny_dataset.parent / "patients" / case / "ct.nii.gz", scan)
    out = tmp_path / "out"
    argv = ["predict", str(BUNDLE), "--checkpoint", str(random_checkpoint(tmp_path / "m.pt")), "--input", str(scan),
            "--output", str(out), "--output-layout", layout, *strip, "--device", "cpu", "--roi-size", "32", "32",
            "16", "--no-uncertainty", "--no-preview", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert (out / case / "seg.nii.gz").is_file()
    assert (out / f"{case}.nii.gz").is_file() is (layout == "flat")
    if layout == "flat":
        flat, seg = nib.load(out / f"{case}.nii.gz"), nib.load(out / case / "seg.nii.gz")
        np.testing.assert_array_equal(np.asanyarray(flat.dataobj), np.asanyarray(seg.dataobj))
        assert main(argv) == 0  # a rerun skips the case and keeps its flat mask
        assert (out / f"{case}.nii.gz").is_file()


def test_predict_calls_a_missing_input_missing(tmp_path, caplog):
    from tests.test_predictor import BUNDLE

    missing = tmp_path / "ct.nii.gz"
    assert main(["predict", str(BUNDLE), "--input", str(missing), "--output", str(tmp_path / "o")]) == 2
    assert f"--input {missing}: no such file or folder" in caplog.text
