"""Overlay configs by name or path: ``clinseg train|evaluate|predict --config``, and MLflow recording the
config as run (overlays and overrides applied) through both runners, ``clinseg train`` and ``python -m
monai.bundle run``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from monai.bundle import ConfigParser
from monai.transforms import Spacingd

from pipeline.cli import build_parser, main
from pipeline.core.bundle import Bundle, BundleError
from pipeline.core.checkpoint import load_checkpoint
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.tracking.store import CONFIG_AS_RUN, export_config_as_run, running_parser
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES
from tests.test_predictor import random_checkpoint

BUNDLE = BUNDLES / "ct_organ_resunet3d"
CONFIGS = BUNDLE / "configs"
TINY = {"val_interval": 1, "batch_size": 2, "samples_per_volume": 1, "roi_size": [32, 32, 16]}
OVERLAY = {"learning_rate": 0.0123, "max_epochs": 1}  # the base says 0.003 and 60 epochs


def _overlay(folder: Path, content: dict) -> Path:
    path = folder / "overlay.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_bundle_config_files_take_names_and_paths_in_order(tmp_path):
    bundle = Bundle.at(BUNDLE)
    overlay = _overlay(tmp_path, OVERLAY)
    assert bundle.config_files(["train", "cosine_warmup", overlay]) == [
        str(CONFIGS.parent.parent / "_base" / "base_common.yaml"), str(CONFIGS / "common.yaml"),
        str(CONFIGS.parent.parent / "_base" / "base_train.yaml"), str(CONFIGS / "train.yaml"),
        str(CONFIGS / "cosine_warmup.yaml"),
        str(overlay.resolve()),
    ]  # fmt: skip
    parser = bundle.parser(["train", "cosine_warmup", str(overlay)], batch_size=5)
    assert parser["learning_rate"] == 0.0123 and parser["max_epochs"] == 1 and parser["batch_size"] == 5
    assert parser["lr_scheduler"]["_target_"] == "monai.optimizers.WarmupCosineSchedule"
    with pytest.raises(BundleError, match=r"no config 'missing\.yaml'.*cosine_warmup"):
        bundle.config_files(["train", "missing.yaml"])


def test_export_config_as_run_writes_the_running_parsers_config(tmp_path):
    parser = ConfigParser({
        "imports": ["$import pipeline", "$import pipeline.tracking.store"],
        "lr": 0.1,
        "config_as_run": f"$pipeline.tracking.store.export_config_as_run('{tmp_path}')",
    })  # fmt: skip
    parser.update({"lr": 0.5, "extra": [1, 2]})
    path = parser.get_parsed_content("config_as_run")
    assert path == str(tmp_path / CONFIG_AS_RUN)
    written = json.loads(Path(path).read_text())
    assert written["lr"] == 0.5 and written["extra"] == [1, 2]
    with pytest.raises(RuntimeError, match="no ConfigParser is evaluating"):
        running_parser()
    with pytest.raises(RuntimeError, match="no ConfigParser is evaluating"):
        export_config_as_run(tmp_path)


def test_cli_config_and_set_for_train_evaluate_predict():
    parser = build_parser()
    for command in (["train", "b"], ["evaluate", "b"], ["predict", "b", "--output", "o"]):
        overlays = ["--config", "a.yaml", "--config", "cosine_warmup", "--set", "x=1"]
        args = parser.parse_args([*command, *overlays])
        assert args.config == ["a.yaml", "cosine_warmup"] and args.set == ["x=1"]


def test_predictor_takes_inference_overlays_then_overrides(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "model.pt")
    overlay = _overlay(tmp_path, {"class_names": ["liver", "tumour"], "spacing": [3.0, 3.0, 3.0]})
    options = InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    predictor = Predictor.from_bundle(
        BUNDLE, checkpoint, options=options, config=["inference", overlay], spacing=[4.0, 4.0, 4.0]
    )
    assert predictor.class_names == ("liver", "tumour")
    spacing = next(t for t in predictor.preprocessing.transforms if isinstance(t, Spacingd))
    assert list(spacing.spacing_transform.pixdim) == [4.0, 4.0, 4.0]  # --set comes after --config


def _run_params_and_config(db: Path) -> tuple[dict[str, str], dict, set[str]]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    local = client.download_artifacts(run.info.run_id, CONFIG_AS_RUN, str(db.parent / "downloaded"))
    return run.data.params, json.loads(Path(local).read_text()), artifacts


def _assert_overlay_recorded(params: dict[str, str], config: dict, artifacts: set[str]) -> None:
    assert params["learning_rate"] == "0.0123" and len(params["config.sha256"]) == 64
    assert not [k for k in params if k.startswith("config.") and k != "config.sha256"]  # the config is an artifact
    assert config["learning_rate"] == 0.0123 and config["max_epochs"] == 1
    assert config["roi_size"] == [32, 32, 16]  # the overrides too
    assert {CONFIG_AS_RUN, "train.yaml", "model.pt"} <= artifacts


@pytest.mark.slow
def test_monai_bundle_run_with_an_overlay_records_the_config_as_run(tiny_dataset, tmp_path):
    ckpt_dir, db = tmp_path / "ckpt", tmp_path / "mlflow.db"
    ckpt_dir.mkdir()
    (ckpt_dir / CONFIG_AS_RUN).write_text(json.dumps({"learning_rate": 9.9}))  # a previous run's: replaced
    monai_bundle_run(
        BUNDLE, ["train", _overlay(tmp_path, OVERLAY).resolve()], tmp_path,
        "--dataset_dir", str(tiny_dataset.parent), "--ckpt_dir", str(ckpt_dir),
        "--tracking_uri", f"sqlite:///{db}", "--log_run_artifacts", "False",
        *[a for k, v in TINY.items() for a in (f"--{k}", str(v))],
        threads=1,
    )  # fmt: skip
    assert load_checkpoint(ckpt_dir / "model_final.pt")["trainer"]["max_epochs"] == 1
    _assert_overlay_recorded(*_run_params_and_config(db))


@pytest.mark.slow
def test_clinseg_train_with_overlays_by_name_and_path_records_the_config_as_run(tiny_dataset, tmp_path):
    overlay = _overlay(tmp_path, {**OVERLAY, "warmup_epochs": 1})
    db = tmp_path / "mlflow.db"
    code = main([
        "train", str(BUNDLE), "--config", "cosine_warmup", "--config", str(overlay),
        "--dataset-dir", str(tiny_dataset.parent), "--ckpt-dir", str(tmp_path / "ckpt"),
        "--tracking-uri", f"sqlite:///{db}", "--set", "log_run_artifacts=false",
        *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")],
    ])  # fmt: skip
    assert code == 0
    assert load_checkpoint(tmp_path / "ckpt" / "model_final.pt")["trainer"]["max_epochs"] == 1
    params, config, artifacts = _run_params_and_config(db)
    _assert_overlay_recorded(params, config, artifacts)
    assert config["lr_scheduler"]["_target_"] == "monai.optimizers.WarmupCosineSchedule"
