"""A region plan (``clinseg plan --regions``) writes a bundle whose configs build through MONAI's ConfigParser:
one sigmoid output per region, Dice + BCE, labels sampled by class then turned into region masks, validation
scored per region, inference back to labels; a label plan's configs stay as they were."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss

from pipeline.export.bundle import export_bundle
from pipeline.export.configs import MONAI_LABEL_POST
from pipeline.planning import plan as plan_module
from pipeline.planning.bundle_writer import TEMPLATE, write_planned_bundle
from pipeline.planning.compute import ComputeBudget, measure_step
from pipeline.planning.plan import make_plan
from pipeline.planning.region_bundle import REGION_EDITS, region_template
from tests.export_fixtures import untrained_checkpoint
from tests.planning_fixtures import fake_fingerprint, step_timing
from transforms.labels.regions import LabelToRegionsd

REGIONS = {"whole_tumour": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]}
NAMES = ("necrosis", "edema", "non-enhancing", "enhancing")
SHAPE = (20, 22, 18)


def _datalist(root) -> str:
    """Three tiny two-channel cases with labels 0..4 nested like a tumour (training 2, validation 1)."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        label = np.zeros(SHAPE, np.uint8)
        label[4:16, 4:16, 4:14] = 2
        label[7:13, 7:13, 6:12] = 1
        label[8:10, 8:10, 7:9] = 3
        label[10:12, 10:12, 9:11] = 4
        entry = {"case": f"case{i}"}
        for key in ("flair", "t1c", "label"):
            data = label if key == "label" else rng.normal(size=SHAPE).astype(np.float32) + label
            nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), root / f"{key}{i}.nii.gz")
            entry[key] = str(root / f"{key}{i}.nii.gz")
        entries.append({**entry, "image": entry["flair"]})
    path = root / "dataset.json"
    labels = {"0": "background", **{str(i + 1): n for i, n in enumerate(NAMES)}}
    content = {"channels": {"flair": "MR", "t1c": "MR"}, "labels": labels, "training": entries[:2],
               "validation": entries[2:], "test": entries[2:]}  # fmt: skip
    path.write_text(json.dumps(content))
    return path


def _plan(monkeypatch, regions):
    monkeypatch.setattr(plan_module, "measure_step", lambda *a, **k: step_timing(0.05))
    fingerprint = fake_fingerprint([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [20, 22, 18], {"flair": "MR", "t1c": "MR"},
                                   labels=NAMES)  # fmt: skip
    plan = make_plan(fingerprint, ComputeBudget("cpu", 60.0), counts={"training": 2, "validation": 1},
                     dims="3d", regions=regions)  # fmt: skip
    return plan, fingerprint


@pytest.fixture
def region_bundle(tmp_path, monkeypatch):
    plan, fingerprint = _plan(monkeypatch, REGIONS)
    datalist = _datalist(tmp_path)
    return write_planned_bundle(tmp_path / "bundle", plan, fingerprint, datalist), plan


def _parser(bundle, *names) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{n}.yaml") for n in ("common", *names)])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    return parser


def test_the_plan_has_one_output_per_region_and_samples_by_label(monkeypatch):
    plan, _ = _plan(monkeypatch, REGIONS)
    assert plan["network"]["args"]["out_channels"] == 3
    assert plan["regions"]["names"] == list(REGIONS) and plan["regions"]["class_order"] == [2, 1, 4]
    assert plan["class_names"] == list(NAMES)
    assert plan["sampling"]["ratios"] == [1] * 5 and "sigmoid" in plan["training"]["loss"]
    labels, _ = _plan(monkeypatch, None)
    assert labels["regions"] is None and labels["network"]["args"]["out_channels"] == 5


def test_step_timing_uses_the_region_loss(monkeypatch):
    seen = {}

    def forward(self, input, target):
        seen.update(sigmoid=self.dice.sigmoid, target=tuple(target.shape))
        return input.float().mean()

    monkeypatch.setattr(DiceCELoss, "forward", forward)
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [4, 8]}
    measure_step(
        "res_unet", args, (1, 1, 16, 16), 3, ComputeBudget("cpu", 10.0), repeats=1, regions=True
    )
    assert seen == {"sigmoid": True, "target": (1, 3, 16, 16)}


def test_region_configs_build_and_run_on_tiny_cases(region_bundle):
    bundle, _ = region_bundle
    common = _parser(bundle)
    assert common.get_parsed_content("out_channels") == 3 and common.get_parsed_content("label_classes") == 5
    assert common.get_parsed_content("region_labels") == [[1, 2, 3, 4], [1, 3, 4], [4]]
    train = _parser(bundle, "train")
    loss = train.get_parsed_content("loss")
    assert loss.dice.sigmoid and not loss.dice.softmax and loss.dice.include_background
    item = train.get_parsed_content("train#dataset")[0]
    item = item[0] if isinstance(item, list) else item
    assert item["image"].shape[0] == 2 and item["label"].shape[0] == 3  # region masks
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
    assert torch.all(item["label"][2] <= item["label"][1]) and torch.all(item["label"][1] <= item["label"][0])
    # validation: labels -> regions in postprocessing, sigmoid > 0.5, Dice named by region
    val = train.get_parsed_content("validate#dataset")[0]
    post = train.get_parsed_content("validate#postprocessing")
    out = post({"pred": torch.randn(3, *val["label"].shape[1:]), "label": val["label"]})
    assert out["pred"].shape == out["label"].shape == (3, *val["label"].shape[1:])
    assert set(torch.unique(out["pred"]).tolist()) <= {0.0, 1.0}
    assert train.get("validate#key_metric#val_mean_dice#include_background") is True
    assert "per_class_dice(@region_names" in train.get("validate#additional_metrics#val_dice")
    evaluate = _parser(bundle, "train", "evaluate")
    assert evaluate.get_parsed_content("validate#handlers#2#metrics") == [
        "val_mean_dice", "val_dice_whole_tumour", "val_dice_core", "val_dice_enhancing"
    ]  # fmt: skip
    # inference: sigmoid, then regions -> labels on the input grid
    inference = _parser(bundle, "inference")
    net, roi = inference.get_parsed_content("network_def"), inference.get_parsed_content("roi_size")
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 2, *roi)).shape == (1, 3, *roi)
    restore = inference.get_parsed_content("postprocessing").transforms[0]
    assert restore.to_labels.class_order == [2, 1, 4]
    assert inference.get("evaluator#postprocessing#transforms#0#sigmoid") is True


def test_docs_and_metadata_describe_the_regions(region_bundle):
    bundle, _ = region_bundle
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3 and pred["channel_def"] == {
        "0": "whole_tumour",
        "1": "core",
        "2": "enhancing",
    }
    readme = (bundle / "docs" / "README.md").read_text()
    assert "| core | 1, 3, 4 | 1 |" in readme and "innermost region" in readme
    assert json.loads((bundle / "configs" / "plan.json").read_text())["regions"]["names"] == list(REGIONS)


def test_label_plans_keep_the_template_as_it_is(tmp_path, monkeypatch):
    plan, fingerprint = _plan(monkeypatch, None)
    bundle = write_planned_bundle(tmp_path / "bundle", plan, fingerprint, _datalist(tmp_path))
    for name in REGION_EDITS:
        text = (bundle / "configs" / name).read_text()
        assert text == (TEMPLATE / name).read_text().replace("BUNDLE", str(bundle))
    assert "regions" not in _parser(bundle).config


@pytest.mark.parametrize("name", sorted(REGION_EDITS))
def test_each_region_edit_finds_its_template_text_once(name):
    text = region_template(name, (TEMPLATE / name).read_text())
    for _, new in REGION_EDITS[name]:
        assert new in text
    with pytest.raises(ValueError, match=f"planning template {name}"):
        region_template(name, text.replace(REGION_EDITS[name][0][1], ""))


def test_label_to_regions_runs_after_the_label_based_crop(region_bundle):
    bundle, _ = region_bundle
    steps = _parser(bundle, "train").get_parsed_content("random_transforms")
    names = [type(s).__name__ for s in steps]
    assert names.index("RandCropByLabelClassesd") < names.index("LabelToRegionsd") == len(names) - 1
    crop = steps[names.index("RandCropByLabelClassesd")]
    assert crop.cropper.num_classes == 5 and isinstance(steps[-1], LabelToRegionsd)


def test_exported_region_bundle_gives_monai_label_sigmoid_probabilities(region_bundle, tmp_path):
    """MONAI Label's post_transforms take logits: a region bundle's get a sigmoid per region, as Predictor's."""
    bundle, _ = region_bundle
    out = export_bundle(untrained_checkpoint(bundle, tmp_path / "run"), tmp_path / "out", bundle=bundle)
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.yaml"))
    activation = parser[MONAI_LABEL_POST]["transforms"][0]
    assert activation == {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}


def test_export_names_the_bundle_of_an_unknown_output_activation(region_bundle, tmp_path):
    bundle, _ = region_bundle
    common = bundle / "configs" / "common.yaml"
    assert "output_activation: sigmoid" in common.read_text()
    common.write_text(common.read_text().replace("output_activation: sigmoid", "output_activation: Sigmoid"))
    with pytest.raises(ValueError, match=r"configs: output_activation must be softmax or sigmoid, got 'Sigmoid'"):
        export_bundle(untrained_checkpoint(bundle, tmp_path / "run"), tmp_path / "out", bundle=bundle)
