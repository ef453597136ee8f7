"""Default output folders sit under the working directory, never in the checkout's bundles/; a training datalist
without labels fails naming the datalist file and the split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.cli.evaluate import default_output
from pipeline.core.bundle import Bundle, BundleError
from pipeline.core.datalist import DatalistError
from pipeline.export.configs import EXPORTED_CKPT_DIR, exported_configs
from tests.bundle_components import SHIPPED
from tests.conftest import BUNDLES

torch.set_num_threads(1)
NAMES = [b.name for b in SHIPPED]


def _unlabelled_datalist(folder: Path, input_keys: list[str]) -> Path:
    """A datalist whose training and validation cases have inputs but no ``label`` (files need not exist)."""
    cases = [{"case": f"case_00{i}", **{k: f"{k}_{i}.nii.gz" for k in input_keys}} for i in range(2)]
    path = folder / "dataset.json"
    path.write_text(json.dumps({"training": cases[:1], "validation": cases[1:], "test": []}))
    return path


@pytest.mark.parametrize("name", NAMES)
def test_default_ckpt_dir_is_a_run_folder_under_the_working_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = Bundle.at(BUNDLES / name)
    ckpt_dir = Path(bundle.parser("train").get_parsed_content("ckpt_dir"))
    assert ckpt_dir == tmp_path / "runs" / json.loads(bundle.meta_file.read_text())["name"]
    assert BUNDLES.resolve() not in ckpt_dir.parents


def test_fusion_pretrain_overlay_writes_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = Bundle.at(BUNDLES / "ctmr_fusion_seg3d").parser(["train", "fusion_pretrain"])
    assert Path(parser.get_parsed_content("ckpt_dir")) == tmp_path / "runs" / "ctmr_fusion_seg3d" / "fusion_pretrain"


@pytest.mark.parametrize("where", ["run_folder", "bundle_models", "none"])
def test_default_checkpoint_finds_the_run_folder_or_says_where_it_looked(where, tmp_path, monkeypatch):
    bundle_root = tmp_path / "bundle"
    (bundle_root / "configs").mkdir(parents=True)
    (bundle_root / "configs" / "metadata.json").write_text(json.dumps({"name": "organ"}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    expected = {"run_folder": work / "runs" / "organ" / "model.pt", "bundle_models": bundle_root / "models" / "model.pt"}
    if where in expected:
        expected[where].parent.mkdir(parents=True)
        expected[where].write_bytes(b"weights")
        assert Bundle.at(bundle_root).default_checkpoint == expected[where]
    else:
        with pytest.raises(BundleError, match="no trained checkpoint") as error:
            Bundle.at(bundle_root).default_checkpoint  # noqa: B018 (the property raises)
        assert all(str(path) in str(error.value) for path in expected.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("part, split", [("train#datalist", "training"), ("validate#datalist", "validation")])
def test_training_datalist_without_labels_names_the_file_and_split(name, part, split, tmp_path):
    bundle = Bundle.at(BUNDLES / name)
    input_keys = list(bundle.parser("train").get_parsed_content("input_keys"))
    datalist = _unlabelled_datalist(tmp_path, input_keys)
    parser = bundle.parser("train", datalist_file=str(datalist), ckpt_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError) as error:  # MONAI wraps it; clinseg's CLI reports the innermost error
        parser.get_parsed_content(part)
    cause = error.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, DatalistError)
    assert str(datalist) in str(cause) and repr(split) in str(cause) and "'label'" in str(cause)


def test_clinseg_train_without_labels_fails_naming_the_datalist_and_split(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    datalist = _unlabelled_datalist(tmp_path, ["image"])
    argv = ["train", str(BUNDLES / "ct_organ_resunet3d"), "--dataset-dir", str(tmp_path),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--epochs", "1"]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    message = caplog.text + captured.out + captured.err  # the bundle's logging.conf logs to the console
    assert str(datalist) in message and "'training'" in message and "'label'" in message
    assert not (BUNDLES / "ct_organ_resunet3d" / "models").exists()


def test_evaluation_default_output_is_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = default_output("ct_organ_resunet3d")
    assert output.parent == tmp_path / "evaluation" and output.name.startswith("ct_organ_resunet3d-")


@pytest.mark.parametrize("name", NAMES)
def test_exported_bundle_keeps_its_checkpoints_in_its_own_models_folder(name):
    train = exported_configs(Bundle.at(BUNDLES / name), None)["train"]
    assert train["ckpt_dir"] == EXPORTED_CKPT_DIR == "$@bundle_root + '/models'"
