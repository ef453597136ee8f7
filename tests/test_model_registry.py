"""MLflow Model Registry against a real ``mlflow server``: ``clinseg train --register`` and ``clinseg
register-model RUN_ID`` make model versions whose artifact is the exported bundle; ``clinseg predict
models:/NAME/VERSION`` and ``models:/NAME@ALIAS`` fetch and run it; ``clinseg compare --models`` lists the versions
with their metrics. Bad model URIs fail with a clear message."""

from __future__ import annotations

import json

import mlflow
import pytest

from pipeline.cli import main
from pipeline.core.model_uri import fetch_bundle, is_model_uri
from pipeline.export.registry import BUNDLE_ARTIFACT
from tests.conftest import BUNDLES
from tests.export_fixtures import TINY_TRAINING
from tests.test_mlflow_server import MlflowServer

BUNDLE = BUNDLES / "ct_organ_resunet3d"


@pytest.mark.slow
def test_register_predict_and_list_model_versions(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sets = [arg for key, value in TINY_TRAINING.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    server = MlflowServer(tmp_path)
    try:
        server.start(timeout=300)  # a loaded CI machine starts it slowly
        uri = server.uri
        train = ["train", str(BUNDLE), "--dataset-dir", str(tiny_dataset.parent), "--ckpt-dir", str(tmp_path / "run"),
                 "--tracking-uri", uri, "--epochs", "1", "--register", "organ", "--alias", "champion", *sets]  # fmt: skip
        assert main(train) == 0
        assert "registered models:/organ/1 (alias champion)" in capsys.readouterr().out
        client = mlflow.MlflowClient(tracking_uri=uri)
        (version,) = client.search_model_versions("name='organ'")
        run = client.get_run(version.run_id)
        assert version.source.endswith(f"/{BUNDLE_ARTIFACT}")
        assert float(version.tags["val_mean_dice"]) == pytest.approx(run.data.metrics["val_mean_dice"], abs=1e-5)

        assert main(["register-model", version.run_id, "organ", "--tracking-uri", uri]) == 0  # from MLflow alone
        assert "registered models:/organ/2" in capsys.readouterr().out

        fetched = fetch_bundle("models:/organ@champion", tmp_path / "fetched", tracking_uri=uri)
        meta = json.loads((fetched / "configs" / "metadata.json").read_text())
        assert meta["training_run"]["mlflow_run_id"] == version.run_id
        assert meta["eval_metrics"]["val_mean_dice"] == pytest.approx(float(version.tags["val_mean_dice"]), abs=1e-4)

        test_cases = [c["case"] for c in json.loads(tiny_dataset.read_text())["test"]]
        for name, model in [("by_version", "models:/organ/2"), ("by_alias", "models:/organ@champion")]:
            out = tmp_path / name
            assert main(["predict", model, "--tracking-uri", uri, "--input", str(tiny_dataset), "--output", str(out),
                         "--no-preview", "--no-dicom-seg", "--quiet"]) == 0  # fmt: skip
            assert all((out / case / "seg.nii.gz").is_file() for case in test_cases)
        capsys.readouterr()

        assert main(["compare", "--models", "organ", "--tracking-uri", uri, "--format", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["version"] for r in rows] == [2, 1]
        assert [r["aliases"] for r in rows] == ["", "champion"]
        assert {r["run_id"] for r in rows} == {version.run_id}
        assert rows[0]["val_mean_dice"] == pytest.approx(run.data.metrics["val_mean_dice"], abs=1e-5)
        assert {"val_dice_organ", "val_dice_lesion"} <= set(rows[0])

        assert main(["predict", "models:/organ/9", "--tracking-uri", uri, "--input", str(tiny_dataset),
                     "--output", str(tmp_path / "missing"), "--quiet"]) != 0  # fmt: skip
        assert main(["compare", "--models", "nobody", "--tracking-uri", uri]) == 2
    finally:
        server.kill()


@pytest.mark.parametrize("text, expected", [("models:/organ/1", True), ("models:/organ@champion", True),
                                            ("bundles/ct_organ_resunet3d", False), ("runs:/abc/bundle", False)])  # fmt: skip
def test_model_uris_are_told_from_bundle_folders(text, expected):
    assert is_model_uri(text) is expected


def test_fetch_rejects_other_uris(tmp_path):
    with pytest.raises(ValueError, match="not a registered-model URI"):
        fetch_bundle("runs:/abc/bundle", tmp_path)


@pytest.mark.parametrize("uri", ["models:/organ/Production", "models:/organ", "models:/@x", "models:/organ/1/extra"])
def test_malformed_model_uris_fail_clearly(uri, tmp_path):
    with pytest.raises(ValueError, match="not a registered-model URI"):
        fetch_bundle(uri, tmp_path, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
