"""Units of the pipeline: case discovery and sanitizing, datalists, checkpoints, tracking defaults."""

from __future__ import annotations

import json
import re
import socket

import pytest
import torch

from pipeline.core.checkpoint import CheckpointError, NetworkSpec, load_checkpoint, network_from_checkpoint
from pipeline.core.datalist import DatalistError, load_datalist
from pipeline.batch.discovery import discover_cases, sanitize_case_id
from pipeline.tracking.store import (
    TrackingUnavailableError,
    default_tracking_uri,
    experiment_params,
    require_tracking_server,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/passwd", "etc_passwd"), ("DOE^JOHN 1970", "DOE_JOHN_1970"), ("..", "case"), (".hidden", "hidden"),
     ("case_001", "case_001"), ("a/b\\c", "a_b_c")],
)  # fmt: skip
def test_sanitize_case_id(name, expected):
    assert sanitize_case_id(name) == expected


def test_discovery_of_folders_flat_files_and_clashes(tmp_path):
    (tmp_path / "p 1").mkdir()
    (tmp_path / "p 1" / "ct.nii.gz").write_bytes(b"")
    (tmp_path / "p 1" / "label.nii.gz").write_bytes(b"")
    (tmp_path / "p_1").mkdir()
    (tmp_path / "p_1" / "image.nii.gz").write_bytes(b"")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.nii.gz").write_bytes(b"")
    (tmp_path / "two" / "b.nii.gz").write_bytes(b"")
    cases = {c.case_id: c for c in discover_cases(tmp_path)}
    assert sorted(cases) == ["p_1", "p_1_2", "two"]
    assert cases["p_1"].inputs["image"].endswith("ct.nii.gz")
    assert cases["two"].problem and "cannot choose" in cases["two"].problem
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ["a.nii.gz", "b.nii", "seg.nii.gz"]:
        (flat / name).write_bytes(b"")
    assert [c.case_id for c in discover_cases(flat)] == ["a", "b"]


def test_discovery_of_multimodal_cases(tmp_path):
    (tmp_path / "c").mkdir()
    for name in ["ct.nii.gz", "mr.nii.gz"]:
        (tmp_path / "c" / name).write_bytes(b"")
    (case,) = discover_cases(tmp_path, modalities={"ct": ["ct"], "mr": ["mr", "t1"]})
    assert sorted(case.inputs) == ["ct", "mr"] and case.problem is None


def test_discovery_rejects_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope is missing"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="neither a folder, a NIfTI file nor a datalist"):
        discover_cases(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    "names, strip, expected",
    [
        (["la_001_0000.nii.gz", "la_002_0000.nii.gz"], None, ["la_001", "la_002"]),  # nnU-Net imagesTs: auto
        (["la_001_0000.nii.gz", "ct.nii.gz"], None, ["ct", "la_001_0000"]),  # not all suffixed: kept
        (["la_001_0000.nii.gz", "ct.nii.gz"], True, ["ct", "la_001"]),
        (["la_001_0000.nii.gz", "la_002_0000.nii.gz"], False, ["la_001_0000", "la_002_0000"]),
    ],
)
def test_discovery_strips_nnunet_channel_suffixes(tmp_path, names, strip, expected):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [c.case_id for c in discover_cases(tmp_path, strip_channel_suffix=strip)] == expected


TWO_CHANNELS = {"t2": ("t2",), "adc": ("adc",)}


@pytest.mark.parametrize(
    "names, problems",
    [
        (["p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0001.nii.gz", "p2_0000.nii.gz"], {}),
        (["p1_0000.nii.gz", "p1_0001.nii.gz", "p2_0000.nii.gz"], {"p2": r"p2_0001\.nii\.gz \(adc\) missing"}),
        (["p1_0001.nii"], {"p1": r"p1_0000\.nii \(t2\) missing.*takes 2 channels \['t2', 'adc'\]"}),
        (["p1_0000.nii.gz", "p1_0001.nii.gz", "p1_0002.nii.gz"], {"p1": r"p1_0002\.nii\.gz beyond the model's"}),
    ],
)
def test_discovery_groups_nnunet_channel_files_of_a_flat_folder(tmp_path, names, problems):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    cases = {c.case_id: c for c in discover_cases(tmp_path, modalities=TWO_CHANNELS)}
    assert sorted(cases) == sorted({n.split("_")[0] for n in names})
    for case_id, case in cases.items():
        if case_id in problems:
            assert case.kind == "missing" and re.search(problems[case_id], case.problem), case.problem
        else:
            assert case.problem is None and list(case.inputs) == ["t2", "adc"]
            assert case.inputs == {"t2": str(tmp_path / f"{case_id}_0000.nii.gz"),
                                   "adc": str(tmp_path / f"{case_id}_0001.nii.gz")}  # fmt: skip


def test_discovery_keeps_one_case_per_file_without_channel_suffixes(tmp_path):
    for name in ["p1_0000.nii.gz", "p1_0001.nii.gz"]:
        (tmp_path / name).write_bytes(b"")
    cases = discover_cases(tmp_path, modalities=TWO_CHANNELS, strip_channel_suffix=False)
    assert [c.case_id for c in cases] == ["p1_0000", "p1_0001"]


@pytest.mark.parametrize("name, case_id", [("ct.nii.gz", "ct"), ("spleen_7_0000.nii.gz", "spleen_7")])
def test_discovery_takes_a_single_nifti_file(tmp_path, name, case_id):
    (tmp_path / name).write_bytes(b"")
    (case,) = discover_cases(tmp_path / name)
    assert case.case_id == case_id and case.inputs == {"image": str(tmp_path / name)} and case.kind == "nifti"


def test_datalist_errors_name_the_file(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "missing.nii.gz"}]}))
    with pytest.raises(DatalistError, match=r"training\[0\]\['image'\].*does not exist"):
        load_datalist(path, "training")
    with pytest.raises(DatalistError, match="has no split 'validation'"):
        load_datalist(path, "validation")
    path.write_text("{not json")
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(path)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    spec = NetworkSpec("res_unet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (4, 8)})
    net = spec.build()
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "network": spec.state_dict()}, path)
    rebuilt = network_from_checkpoint(path)
    x = torch.rand(1, 1, 33, 34)
    torch.testing.assert_close(rebuilt(x), net.eval()(x))
    with pytest.raises(CheckpointError, match="holds network 'other', the config builds 'res_unet'"):
        NetworkSpec("res_unet", {}).load_state_dict({"name": "other"})


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    pickled = tmp_path / "module.pt"
    torch.save({"model": torch.nn.Linear(1, 1)}, pickled)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(pickled)
    with pytest.raises(ValueError, match="unknown network 'res_unte'.*Did you mean 'res_unet'"):
        NetworkSpec("res_unte")


def test_default_tracking_uri_is_sqlite_in_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(workdir=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(workdir=tmp_path) == "http://127.0.0.1:5000"


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(TrackingUnavailableError, match=f"127.0.0.1:{port} is not reachable"):
            require_tracking_server(f"http://127.0.0.1:{port}", timeout=2)


def test_experiment_params_are_flat_strings():
    params = experiment_params({"name": "b", "version": "1"}, window={"level": 50, "width": 400}, roi=(1, 2))
    assert params == {"bundle.name": "b", "bundle.version": "1", "window.level": "50", "window.width": "400",
                      "roi": "[1, 2]"}  # fmt: skip
