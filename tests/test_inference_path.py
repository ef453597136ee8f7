"""One inference path: the bundle's inference config means the same to MONAI's runner and to ``clinseg predict``."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import build_parser, main
from pipeline.core.bundle import Bundle
from pipeline.inference.options import InferenceOptions, PostprocessOptions
from pipeline.inference.predictor import Predictor
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES

BUNDLE = BUNDLES / "ct_organ_resunet3d"
ROI = [32, 32, 16]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights of the bundle's own ``network_def``, as MONAI's ``CheckpointLoader`` reads them."""
    torch.manual_seed(0)
    net = Bundle.at(BUNDLE).parser("inference").get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    return path


def _masks(folder, cases):
    return {c: np.asarray(nib.load(folder / c / "seg.nii.gz").dataobj) for c in cases}


@pytest.mark.slow
def test_monai_bundle_run_and_clinseg_predict_write_the_same_masks(tiny_dataset, checkpoint, tmp_path):
    cases = [e["case"] for e in json.loads(tiny_dataset.read_text())["test"]]
    monai_bundle_run(
        BUNDLE, ["inference"], tmp_path,
        "--dataset_dir", str(tiny_dataset.parent),
        "--output_dir", str(tmp_path / "monai"),
        "--ckpt_path", str(checkpoint),
        "--roi_size", json.dumps(ROI),
        "--device", "$torch.device('cpu')",
    )  # fmt: skip
    code = main([
        "predict", str(BUNDLE), "--input", str(tiny_dataset), "--split", "test", "--output", str(tmp_path / "clinseg"),
        "--checkpoint", str(checkpoint), "--roi-size", *map(str, ROI), "--device", "cpu", "--no-amp",
        "--no-preview", "--no-dicom-seg", "--quiet",
    ])  # fmt: skip
    assert code == 0
    monai, ours = _masks(tmp_path / "monai", cases), _masks(tmp_path / "clinseg", cases)
    for case in cases:
        assert np.unique(ours[case]).size > 1, "a mask of one label proves little"
        np.testing.assert_array_equal(monai[case], ours[case], err_msg=case)
        affine = nib.load(tmp_path / "monai" / case / "seg.nii.gz").affine
        np.testing.assert_array_equal(affine, nib.load(tmp_path / "clinseg" / case / "seg.nii.gz").affine)


def test_editing_the_bundle_postprocessing_changes_clinseg_predict(tiny_dataset, checkpoint, tmp_path):
    common = ["--input", str(tiny_dataset), "--split", "test", "--checkpoint", str(checkpoint),
              "--roi-size", *map(str, ROI), "--device", "cpu", "--no-preview", "--no-dicom-seg", "--quiet"]  # fmt: skip
    cases = [e["case"] for e in json.loads(tiny_dataset.read_text())["test"]]
    assert main(["predict", str(BUNDLE), "--output", str(tmp_path / "plain"), *common]) == 0
    edited = [
        "--set",
        "postprocessing#transforms#0#mode=nearest",
        "--set",
        "label_postprocessing={keep_largest: [1]}",
    ]
    assert main(["predict", str(BUNDLE), "--output", str(tmp_path / "edited"), *common, *edited]) == 0
    plain, changed = _masks(tmp_path / "plain", cases), _masks(tmp_path / "edited", cases)
    assert any(not np.array_equal(plain[c], changed[c]) for c in cases)
    run = json.loads((tmp_path / "edited" / "report.json").read_text())["run"]
    assert run["restore"] == "nearest" and run["postprocess"]["keep_largest"] == [1]


def test_options_resolve_once_into_the_bundle_components(checkpoint):
    bundle = Predictor.from_bundle(BUNDLE, checkpoint, options=InferenceOptions(device="cpu"))
    assert bundle.options.roi_size == (64, 64, 32) and bundle.options.restore == "linear"
    assert bundle.options.overlap == 0.5 and bundle.options.mode == "gaussian"
    options = InferenceOptions(roi_size=ROI, overlap=0.25, mode="constant", device="cpu", restore="nearest")
    given = Predictor.from_bundle(BUNDLE, checkpoint, options=options)
    assert (
        list(given.inferer.roi_size) == ROI
        and given.inferer.overlap == 0.25
        and given.inferer.mode == "constant"
    )
    assert given.options.restore == "nearest" and given.postprocessing.transforms[0].mode == "nearest"
    assert given.settings()["roi_size"] == ROI and given.settings()["overlap"] == 0.25


def _inference_flags(command: str) -> set[str]:
    subcommands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    groups = subcommands[command]._action_groups
    return {
        flag for g in groups if g.title == "inference" for a in g._group_actions for flag in a.option_strings
    }


def test_predict_and_evaluate_share_the_inference_options(tiny_dataset, checkpoint, monkeypatch):
    flags = {"--tta", "--crop-foreground", "--amp", "--restore", "--keep-largest", "--min-size-ml", "--fill-holes",
             "--roi-size", "--overlap", "--sw-batch-size", "--mode", "--device"}  # fmt: skip
    assert flags <= _inference_flags("predict") == _inference_flags("evaluate")
    from pipeline.evaluation import evaluate

    seen = {}

    def from_bundle(bundle, checkpoints, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(evaluate.Predictor, "from_bundle", from_bundle)
    code = main(["evaluate", str(BUNDLE), "--checkpoint", str(checkpoint), "--dataset-dir", str(tiny_dataset.parent),
                 "--no-tracking", "--tta", "--crop-foreground", "--no-amp", "--restore", "nearest", "--overlap", "0.25",
                 "--keep-largest", "1", "--device", "cpu"])  # fmt: skip
    assert code == 2
    options = seen["options"]
    assert options.tta and options.crop_foreground and options.amp is False and options.restore == "nearest"
    assert options.overlap == 0.25 and seen["postprocess"] == PostprocessOptions(keep_largest=(1,))
