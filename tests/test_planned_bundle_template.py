"""A planned bundle is wired like the shipped bundles (same handlers, engines, inference chain), keeps every
planned value a named knob in common.yaml, and builds its network and transforms through MONAI's parser."""

from __future__ import annotations

import json

import pytest
import yaml
from monai.bundle import ConfigParser

from pipeline.planning import plan as plan_module
from pipeline.planning.bundle_writer import write_planned_bundle
from pipeline.planning.compute import ComputeBudget
from pipeline.planning.plan import make_plan
from tests.conftest import BUNDLES
from tests.planning_fixtures import fake_fingerprint, step_timing
from tests.test_bundle_configs import SAME_INFERENCE, SAME_TRAINING, _get, _handlers, _load

SHIPPED = BUNDLES / "ct_organ_resunet3d"
PLANNED_SCHEDULE = {"lr_scheduler"}  # polynomial decay over the planned epochs, not ReduceLROnPlateau


def _fingerprint(channels):
    return fake_fingerprint([0.8, 0.8, 2.5], [0.7, 0.7, 2.0], [256, 256, 60], channels,
                            nonzero=0.95, background=0.01, labels=("liver", "tumour"))  # fmt: skip


@pytest.fixture(params=[(3, {"ct": "CT"}), (2, {"ct": "CT"}), (3, {"t1": "MR", "flair": "MR"}), (2, {"t2": "MR"})],
                ids=["3d-ct", "2d-ct", "3d-two-mr", "2d-mr"])  # fmt: skip
def planned(request, tmp_path, monkeypatch):
    dims, channels = request.param
    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    plan = make_plan(
        _fingerprint(channels),
        ComputeBudget("cpu", 600.0),
        counts={"training": 8, "validation": 2},
        dims=f"{dims}d",
    )
    datalist = tmp_path / "data" / "dataset.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"channels": channels, "training": [], "validation": [], "test": []}))
    return write_planned_bundle(tmp_path / "bundle", plan, _fingerprint(channels), datalist), plan


def test_wiring_matches_the_shipped_bundles(planned):
    bundle, _ = planned
    handlers = _handlers(bundle)
    budget_stop = next(h for h in handlers if h["_target_"].endswith("TimeBudgetStop"))
    assert budget_stop.pop("lr_scheduler") == "@lr_scheduler"  # the planned decay is refitted to the budget
    assert handlers == _handlers(SHIPPED)
    train, shipped_train = _load(bundle, "train"), _load(SHIPPED, "train")
    shipped_inferer = _get(_load(SHIPPED, "common"), "inferer")  # shipped: one sliding window, in base_common.yaml
    for id_ in set(SAME_TRAINING) - PLANNED_SCHEDULE:
        planned_value = _get(train, id_)
        if id_ == "train#trainer":  # planned epochs have a length of their own (few cases: the loader restarts)
            assert planned_value.pop("epoch_length") == "@steps_per_epoch"
        shipped_value = _get(shipped_train, id_)
        assert planned_value == (shipped_inferer if shipped_value == "@inferer" else shipped_value), id_
    inference, shipped_inference = _load(bundle, "inference"), _load(SHIPPED, "inference")
    for id_ in SAME_INFERENCE:
        assert _get(inference, id_) == _get(shipped_inference, id_), id_
    assert _get(inference, "inferer") == shipped_inferer


def test_planned_values_are_knobs_in_common_only(planned):
    bundle, plan = planned
    common = _load(bundle, "common")
    for name in ("train", "inference", "evaluate"):
        overlap = set(common) & set(_load(bundle, name))
        assert overlap == set(), f"{name}.yaml redefines {sorted(overlap)}"
    assert common["roi_size"] == plan["patch"] and common["spacing"] == plan["spacing"]
    assert common["max_epochs"] == plan["training"]["max_epochs"]
    assert common["steps_per_epoch"] == plan["training"]["steps_per_epoch"]
    assert common["time_budget_s"] == 600.0
    refs = [t for t in common["preprocessing_transforms"] if isinstance(t, str)]
    assert refs == [f"@normalise#{k}" for k in plan["channels"]]
    assert list(common["channels"]) == list(plan["channels"])


def test_configs_build_through_monai(planned):
    bundle, plan = planned
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "inference.yaml")])
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    assert net.spatial_dims == plan["spatial_dims"] and net.in_channels == len(plan["channels"])
    parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    sliced = type(inferer).__name__ == "SliceWiseInferer"
    assert sliced is (plan["spatial_dims"] == 2)
    train = ConfigParser()
    train.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "train.yaml")])
    train["bundle_root"] = str(bundle)
    augment = train.get_parsed_content("random_transforms")
    mr = plan["augmentation"]["mr_artifacts"]
    assert mr is ("MR" in plan["channels"].values() and plan["spatial_dims"] == 3)
    # indices, crop, [squeeze], standard augmentation, [MR artefacts]
    assert len(augment) == 3 + (plan["spatial_dims"] == 2) + mr
    refs = [t for t in _load(bundle, "common")["random_transforms"] if isinstance(t, str)]
    assert refs == ["@augmentation#standard"] + ["@augmentation#mr_artifacts"] * mr


def test_metadata_and_docs_describe_the_plan(planned):
    bundle, plan = planned
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["input_modalities"] == plan["channels"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == len(plan["channels"])
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    assert "clinseg" in meta["required_packages_version"]
    for key in ("schema", "data_source", "eval_metrics", "references"):  # the model zoo's fields
        assert key in meta, key
    assert meta["name"] == bundle.name  # not the name of the last file copied into configs/
    assert meta["network_data_format"]["outputs"]["pred"]["format"] == "segmentation"
    readme = (bundle / "docs" / "README.md").read_text()
    assert str(plan["patch"]) in readme
    assert yaml.safe_load((bundle / "configs" / "common.yaml").read_text())["class_names"] == [
        "liver",
        "tumour",
    ]


def test_the_torchrun_overlay_is_written_and_fits(planned):
    bundle, _ = planned
    configs = bundle / "configs"
    assert (configs / "multi_gpu_train.yaml").read_text() == (BUNDLES / "multi_gpu_train.yaml").read_text()
    parser = ConfigParser()
    parser.read_config([str(configs / n) for n in ("common.yaml", "train.yaml", "multi_gpu_train.yaml")])
    for id_ in ("network_def", "train#dataset", "validate#dataset", "seed"):  # what the overlay refers to
        assert id_ in parser, id_
    assert (
        parser["finalize"][-1] == "$pipeline.training.distributed.shutdown()" and len(parser["finalize"]) > 1
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_dense_unet_is_plannable(tmp_path, monkeypatch, dims):
    """DenseUNet is sized by a base width (``init_features``) and a pooling count, and its planned bundle
    builds a network whose output fits the planned patch."""
    import torch

    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    fingerprint = _fingerprint({"ct": "CT"})
    plan = make_plan(fingerprint, ComputeBudget("cpu", 600.0), counts={"training": 8, "validation": 2},
                     dims=f"{dims}d", network="dense_unet")  # fmt: skip
    args = plan["network"]["args"]
    assert args["levels"] == plan["levels"] - 1 and args["growth_rate"] == max(args["init_features"] // 2, 4)
    datalist = tmp_path / "data" / "dataset.json"
    datalist.parent.mkdir()
    datalist.write_text(json.dumps({"channels": {"ct": "CT"}, "training": [], "validation": [], "test": []}))
    bundle = write_planned_bundle(tmp_path / "bundle", plan, fingerprint, datalist)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("common.yaml", "inference.yaml")])
    parser["network_args"]["init_features"] = 4  # tiny, same depth
    parser["network_args"]["growth_rate"] = 4
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == "DenseUNet"
    patch = [2 ** plan["levels"]] * dims
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, *patch)).shape == (1, 3, *patch)
