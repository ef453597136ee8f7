"""Scale-out by shards (partition, per-shard files, merge) and the ``clinseg predict`` command's exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from pipeline.batch.runner import predict_folder
from pipeline.batch.shard_merge import merge_shards
from pipeline.outputs.registry import OutputOptions
from pipeline.cli import main
from pipeline.inference.options import InferenceOptions
from pipeline.inference.predictor import Predictor
from pipeline.batch.shard import Shard, shard_from_env
from tests.test_html_report import Page
from tests.test_predictor import BUNDLE, random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def flat_source(tiny_dataset, tmp_path_factory):
    """A flat folder of three NIfTI CTs (one case per file)."""
    src = tmp_path_factory.mktemp("flat")
    for case in ("case_000", "case_001", "case_002"):
        shutil.copy(tiny_dataset.parent / "patients" / case / "ct.nii.gz", src / f"{case}.nii.gz")
    return src


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_sorted_cases(count):
    cases = [f"case_{i:03d}" for i in range(11)]
    parts = [Shard(i, count).select(cases) for i in range(count)]
    assert sorted(c for p in parts for c in p) == cases
    assert sum(len(p) for p in parts) == len(cases)
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_shard_parsing_and_torchrun_environment():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse("1/4").suffix == ".shard-1-of-4"
    assert Shard().suffix == "" and Shard().whole
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)
    assert shard_from_env({}) == Shard()
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}) == Shard(2, 3)
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE"):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "3"})


def test_two_shards_fill_one_folder_and_merge(checkpoint, flat_source, tmp_path):
    predictor = Predictor.from_bundle(
        BUNDLE, checkpoint, options=InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    )
    outputs = OutputOptions(preview=False)
    first = predict_folder(predictor, flat_source, tmp_path, shard=Shard(0, 2), outputs=outputs, prefetch=0)
    with pytest.raises(FileNotFoundError, match=r"shards \[1\] of 2"):
        merge_shards(tmp_path)
    second = predict_folder(predictor, flat_source, tmp_path, shard=Shard(1, 2), outputs=outputs)
    assert [r.case for r in first.results] == ["case_000", "case_002"]
    assert [r.case for r in second.results] == ["case_001"]
    assert (tmp_path / "report.shard-0-of-2.json").is_file() and (
        tmp_path / "volumes.shard-1-of-2.csv"
    ).is_file()
    assert not (tmp_path / "report.json").exists()
    assert Page((tmp_path / "report.shard-1-of-2.html").read_text()).cases == ["case_001"]
    merged = merge_shards(tmp_path)
    assert merged.counts() == {"ok": 3, "failed": 0, "skipped": 0}
    assert Page((tmp_path / "report.html").read_text()).cases == ["case_000", "case_001", "case_002"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [c["case"] for c in saved["cases"]] == ["case_000", "case_001", "case_002"]
    with (tmp_path / "volumes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [
        (f"case_00{i}", lab) for i in range(3) for lab in ("1", "2")
    ]
    rerun = predict_folder(predictor, flat_source, tmp_path, shard=Shard(1, 2), outputs=outputs)
    assert rerun.counts()["skipped"] == 1
    redo = predict_folder(
        predictor, flat_source, tmp_path, shard=Shard(1, 2), outputs=outputs, overwrite=True
    )
    assert redo.counts()["ok"] == 1
    changed = predict_folder(predictor, flat_source, tmp_path, shard=Shard(1, 2), outputs=OutputOptions())
    assert changed.counts()["ok"] == 1  # other output settings: the finished case is redone


def test_cli_predict_exit_codes(checkpoint, flat_source, tmp_path, capsys):
    common = [
        "predict",
        str(BUNDLE),
        "--checkpoint",
        str(checkpoint),
        "--roi-size",
        "32",
        "32",
        "16",
        "--device",
        "cpu",
        "--quiet",
        "--no-preview",
        "--keep-largest",
        "1",
        "--min-size-ml",
        "1=0.01",
    ]
    source = tmp_path / "in"
    shutil.copytree(flat_source, source)
    assert main([*common, "--input", str(source), "--output", str(tmp_path / "ok")]) == 0
    assert "3 cases: 3 ok" in capsys.readouterr().out
    (source / "case_009.nii.gz").write_bytes(b"broken")
    assert main([*common, "--input", str(source), "--output", str(tmp_path / "ok")]) == 3
    assert "3 skipped" in capsys.readouterr().out
    assert main([*common, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 2
    assert main([*common, "--input", str(source), "--output", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    assert main([*common, "--output", str(tmp_path / "x")]) == 2
    assert (
        main(["predict", str(BUNDLE), "--output", str(tmp_path / "ok"), "--merge-shards"]) == 2
    )  # none to merge
    with pytest.raises(SystemExit) as err:
        main([*common, "--input", str(source), "--output", str(tmp_path / "x"), "--mode", "median"])
    assert err.value.code == 2
