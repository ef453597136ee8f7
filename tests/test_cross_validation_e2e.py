"""Cross-validation end to end: ``clinseg train --fold k`` per fold, then ``clinseg evaluate --folds`` pools
the out-of-fold predictions into one per-case table (every case once, by the model that did not see it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from pipeline.cli import main
from pipeline.core.splits import split_folds
from pipeline.core.datalist import load_datalist
from pipeline.synthetic.phantoms import synthesize
from tests.conftest import BUNDLES, TINY_SHAPE

BUNDLE = BUNDLES / "ct_organ_resunet3d"
SMALL = ["--set", "val_interval=1", "--set", "batch_size=2", "--set", "samples_per_volume=1",
         "--set", "roi_size=[32, 32, 16]"]  # fmt: skip


@pytest.mark.slow
def test_fold_training_and_pooled_out_of_fold_evaluation(tmp_path):
    data = synthesize(tmp_path / "data", cases=6, seed=11, shape=TINY_SHAPE, splits=(0.5, 0.5, 0.0)).parent
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for fold in (0, 1):
        code = main(["train", str(BUNDLE), "--dataset-dir", str(data), "--ckpt-dir", str(tmp_path / f"fold{fold}"),
                     "--tracking-uri", uri, "--epochs", "1", "--fold", str(fold), "--folds", "2", *SMALL])  # fmt: skip
        assert code == 0
    fold0 = json.loads((tmp_path / "fold0" / "dataset_fold0of2.json").read_text())
    cases0 = {e["case"] for e in fold0["validation"]} | {e["case"] for e in fold0["training"]}
    assert len(cases0) == 6 and not {e["case"] for e in fold0["validation"]} & {e["case"] for e in fold0["training"]}

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
    assert sorted(r.data.tags.get("fold") for r in runs) == ["0", "1"]
    params = runs[0].data.params  # the knobs a person reads; the whole config as run is an artifact
    assert len(params) < 60 and params["roi_size"] == "[32, 32, 16]" and len(params["config.sha256"]) == 64
    local = client.download_artifacts(runs[0].info.run_id, "config_run.json", str(tmp_path / "downloaded"))
    config = json.loads(Path(local).read_text())
    assert config["roi_size"] == [32, 32, 16] and str(config["fold"]) in {"0", "1"}
    assert config["train"]["trainer"]["_target_"] == "SupervisedTrainer"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "config_run.json" in artifacts

    out = tmp_path / "oof"
    code = main(["evaluate", str(BUNDLE), "--dataset-dir", str(data), "--folds", "2",
                 "--checkpoint-pattern", str(tmp_path / "fold{fold}" / "model.pt"), "--output", str(out),
                 "--tracking-uri", uri, "--roi-size", "32", "32", "16"])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    entries = load_datalist(data / "dataset.json", "training") + load_datalist(data / "dataset.json", "validation")
    assert sorted({r["case"] for r in rows}) == sorted(e["case"] for e in entries)
    folds = split_folds(entries, 2, 0)
    held_out = {e["case"]: k for k, fold_entries in enumerate(folds) for e in fold_entries}
    assert all(int(r["fold"]) == held_out[r["case"]] for r in rows)
    assert {r["name"] for r in rows} == {"organ", "lesion"}
