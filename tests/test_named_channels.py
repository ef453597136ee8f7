"""Named channels in the fusion bundle: any two channels by name, MR z-scored inside the foreground, missing
channels named per case.

The slow test trains ``ctmr_fusion_seg3d`` for 2 iterations on two MR-like channels ``flair`` and ``t1c`` (the tiny
phantoms' MR and CT) chosen with ``--channels`` only, then ``clinseg predict`` segments a case onto the reference
(first) channel's grid and fails, alone and named in report.json, the case lacking ``t1c``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensityd, ResampleToMatchd

from pipeline.batch.discovery import discover_cases
from pipeline.core.bundle import Bundle
from pipeline.core.datalist import DatalistError, load_datalist
from tests.conftest import BUNDLES, REPO
from tests.test_bundles_train import _check_two_iterations, _run_bundle
from transforms.intensity.transforms import CTWindowd
from transforms.io.scan import LoadScand

FUSION = BUNDLES / "ctmr_fusion_seg3d"
MR_PAIR = {"flair": "MR", "t1c": "MR"}


def _preprocessing(channels: dict[str, str] | None) -> tuple[list[str], list]:
    overrides = {"channels": channels} if channels else {}
    parser = Bundle.at(FUSION).parser("inference", **overrides)
    return parser.get_parsed_content("input_keys"), parser.get_parsed_content("preprocessing").transforms


@pytest.mark.parametrize(
    "channels, keys, windowed, zscored",
    [(None, ["image", "mr"], ("image",), ("mr",)),
     (MR_PAIR, ["flair", "t1c"], None, ("flair", "t1c")),
     ({"t2": "MR", "ct": "CT"}, ["t2", "ct"], ("ct",), ("t2",))],
)  # fmt: skip
def test_channels_choose_keys_reference_grid_and_normalisation(channels, keys, windowed, zscored):
    input_keys, transforms = _preprocessing(channels)
    assert input_keys == keys
    (resample,) = [t for t in transforms if isinstance(t, ResampleToMatchd)]
    assert resample.keys == tuple(keys[1:]) and resample.key_dst == keys[0]  # onto the first channel's grid
    windows = [t.keys for t in transforms if isinstance(t, CTWindowd)]
    assert windows == ([windowed] if windowed else [])  # no CT channel: no window step
    (zscore,) = [t for t in transforms if isinstance(t, NormalizeIntensityd)]
    assert zscore.keys == zscored
    assert zscore.normalizer.nonzero and zscore.normalizer.channel_wise


def test_loader_names_the_case_and_the_missing_channel(tmp_path):
    path = tmp_path / "flair.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(KeyError, match=r"case 'brats_7'.*\['t1c'\]"):
        LoadScand(keys=["flair", "t1c"])({"case": "brats_7", "flair": str(path)})


def test_datalist_names_the_case_lacking_a_key(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"case": "p1", "flair": "a.nii.gz"}]}))
    with pytest.raises(DatalistError, match=r"case 'p1' of 'training' lacks key\(s\) \['t1c'\]"):
        load_datalist(tmp_path / "dataset.json", required_keys=("flair", "t1c"), check_files=False)


def test_predict_discovery_fails_only_the_case_lacking_a_channel(tmp_path):
    entries = [{"case": "p1", "flair": "a.nii.gz", "t1c": "b.nii.gz"}, {"case": "p2", "flair": "c.nii.gz"}]
    (tmp_path / "dataset.json").write_text(json.dumps({"channels": MR_PAIR, "test": entries}))
    ok, lacking = discover_cases(tmp_path / "dataset.json", modalities={"flair": ("flair",), "t1c": ("t1c",)})
    assert ok.problem is None and set(ok.inputs) == {"flair", "t1c"}
    assert lacking.case_id == "p2" and "['t1c']" in lacking.problem


def test_brats_tumour_keeps_its_signal_after_mr_normalisation(shared_data):
    """One BRATS subject: the bundle's MR step z-scores inside the brain (background stays 0) and clips nothing,
    so the tumour's 95th percentile keeps its z value (the old 0.5-99.5 percentile scaling clipped 8% of it)."""
    subject = shared_data / "brats" / "brats_2013_pat0004_1"
    if not subject.is_dir():
        pytest.skip(f"BRATS subject not found at {subject}")
    _, transforms = _preprocessing(MR_PAIR)
    (zscore,) = [t for t in transforms if isinstance(t, NormalizeIntensityd)]
    t1c = np.asarray(nib.load(subject / "T1c_subtrMeanDivStd.nii.gz").dataobj, np.float32)
    tumour = np.asarray(nib.load(subject / "OTMultiClass.nii.gz").dataobj) > 0  # labels 1-4
    box = tuple(slice(max(i.min() - 8, 0), i.max() + 9) for i in np.nonzero(tumour))  # tumour + margin: fast
    t1c, tumour = t1c[box], tumour[box]
    out = zscore({"flair": torch.from_numpy(t1c[None]), "t1c": torch.from_numpy(t1c[None])})["t1c"][0].numpy()
    assert np.all(out[t1c == 0] == 0)
    brain = t1c != 0
    expected = (t1c[brain] - t1c[brain].mean()) / t1c[brain].std()
    np.testing.assert_allclose(out[brain], expected, rtol=1e-4, atol=1e-4)  # affine, unclipped
    p95 = np.percentile(out[tumour], 95)
    assert p95 < out[tumour].max() and np.mean(out[tumour] >= p95) < 0.06  # no ceiling at or under the 95th


@pytest.fixture(scope="module")
def mr_pair_datalist(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny phantoms as two named channels, flair (their MR, the reference grid) and t1c (their CT)."""
    content = json.loads(tiny_dataset.read_text())
    root = tiny_dataset.parent

    def entry(raw: dict, **drop: bool) -> dict:
        out = {"case": raw["case"], "flair": str(root / raw["mr"]), "t1c": str(root / raw["image"])}
        out = {k: v for k, v in out.items() if not drop.get(k)}
        return {**out, "image": out["flair"], "label": str(root / raw["label"])}

    test = [entry(content["test"][0]), {**entry(content["test"][1], t1c=True), "case": "lacks_t1c"}]
    datalist = {"channels": MR_PAIR, "training": [entry(e) for e in content["training"]],
                "validation": [entry(e) for e in content["validation"]], "test": test}  # fmt: skip
    path = tmp_path_factory.mktemp("mr_pair") / "dataset.json"
    path.write_text(json.dumps(datalist))
    return path


@pytest.mark.slow
def test_fusion_bundle_trains_and_predicts_on_two_named_mr_channels(mr_pair_datalist, tmp_path):
    ckpt = tmp_path / "ckpt"
    _run_bundle(FUSION, ["train"], mr_pair_datalist.parent, tmp_path, "--ckpt_dir", str(ckpt),
                "--roi_size", "[32, 32, 16]", "--channels", str(MR_PAIR))  # fmt: skip
    _check_two_iterations(ckpt, "fusion_seg_net", 2, (32, 32, 16))

    out = tmp_path / "pred"
    command = [sys.executable, "-m", "pipeline.cli", "predict", str(FUSION), "--input", str(mr_pair_datalist),
               "--output", str(out), "--checkpoint", str(ckpt / "model.pt"), "--device", "cpu",
               "--roi-size", "32", "32", "16", "--no-preview", "--set", "channels={flair: MR, t1c: MR}"]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600, check=False)
    assert done.returncode == 3, (done.stdout + done.stderr)[-4000:]  # 3: some case failed
    cases = {c["case"]: c for c in json.loads((out / "report.json").read_text())["cases"]}
    assert cases["lacks_t1c"]["status"] == "failed" and "['t1c']" in cases["lacks_t1c"]["error"]
    (good,) = [c for c in cases.values() if c["case"] != "lacks_t1c"]
    assert good["status"] == "ok", good
    flair = nib.load(good["inputs"]["flair"])
    seg = nib.load(out / good["case"] / "seg.nii.gz")
    assert seg.shape == flair.shape  # on the reference channel's own grid
    np.testing.assert_allclose(seg.affine, flair.affine, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (1, 2, 6, 6, 4)])
def test_fusion_loss_and_metric_rescale_z_scored_sources_onto_unit_range(shape):
    """z-scored sources (no fixed range) are mapped linearly onto [0, 1] per image: a fused image equal to the
    rescaled source scores as it would in [0, 1], and without rescaling it does not."""
    from pipeline.training.fusion import FusionSSIMMetric
    from pipeline.training.losses import FusionLoss, rescale_unit

    unit = torch.rand(shape)
    z = unit * 6.0 - 2.0  # the same images as z-scores, e.g. -2..4
    np.testing.assert_allclose(rescale_unit(z), rescale_unit(unit), atol=1e-5)
    fused = rescale_unit(unit)[:, :1]
    sources = torch.cat([z[:, :1], z[:, :1]], dim=1)
    assert float(FusionLoss(win_size=3, rescale_sources=True)(fused, sources)) < 1e-4
    assert float(FusionLoss(win_size=3)(fused, sources)) > 0.1
    ssim = FusionSSIMMetric(spatial_dims=len(shape) - 2, win_size=3, rescale_sources=True)(fused, sources)
    np.testing.assert_allclose(ssim.numpy(), 1.0, atol=1e-4)
