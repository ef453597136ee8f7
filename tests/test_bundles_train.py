"""The 2D DenseUNet, 3D attention U-Net and CT+MR fusion bundles train through ``python -m monai.bundle run``.

The fast tests at the end cover the fusion schedule's helpers (``pipeline.training.fusion``).

Each run is 2 iterations (3 tiny training cases, batch 2) plus one validation, with SQLite tracking in tmp.
The fusion bundle runs both stages (``fusion_pretrain.yaml`` overlay, then ``train.yaml`` from its best model)
and its Predictor segments a CT + MR case onto the CT's grid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.core.checkpoint import CheckpointError, load_checkpoint, network_from_checkpoint
from pipeline.inference.predictor import InferenceOptions, Predictor
from pipeline.training.fusion import FusionSSIMMetric, PretrainedWeightsLoader
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES


def _run_bundle(bundle: Path, configs: list[str], dataset_dir: Path, workdir: Path, *extra: str) -> str:
    """Two training iterations of ``configs`` (merged in order); returns stdout + stderr."""
    return monai_bundle_run(
        bundle, configs, workdir,
        "--dataset_dir", str(dataset_dir),
        "--tracking_uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--max_epochs", "1",
        "--val_interval", "1",
        "--batch_size", "2",
        "--samples_per_volume", "1",
        *extra,
    )  # fmt: skip


def _mlflow_run(workdir: Path, run_prefix: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
    matching = [
        r for r in runs if re.fullmatch(rf"{run_prefix}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}", r.info.run_name)
    ]
    assert len(matching) == 1, [r.info.run_name for r in runs]
    assert matching[0].info.status == "FINISHED"
    return matching[0]


def _check_two_iterations(ckpt_dir: Path, network: str, in_channels: int, spatial: tuple[int, ...]) -> None:
    assert (ckpt_dir / "model.pt").is_file() and (ckpt_dir / "model_final.pt").is_file()
    assert load_checkpoint(ckpt_dir / "model_final.pt")["trainer"]["iteration"] == 2
    checkpoint = load_checkpoint(ckpt_dir / "model.pt")
    assert checkpoint["network"]["name"] == network
    net = network_from_checkpoint(ckpt_dir / "model.pt")
    with torch.no_grad():
        assert net(torch.rand(1, in_channels, *spatial)).shape == (1, 3, *spatial)


@pytest.fixture(scope="module")
def tiny_dataset_2d(tmp_path_factory) -> Path:
    """Six tiny synthetic 2D CT slices, 3 training / 1 validation / 2 test; returns dataset.json."""
    from pipeline.synthetic.phantoms import synthesize

    out = tmp_path_factory.mktemp("tiny_dataset_2d")
    return synthesize(out, cases=6, seed=3, spatial_dims=2, shape=(64, 60), splits=(0.5, 0.2, 0.3))


@pytest.mark.slow
def test_dense_unet_2d_bundle_trains_two_iterations(tiny_dataset_2d, tmp_path):
    bundle = BUNDLES / "ct_lesion_denseunet2d"
    _run_bundle(bundle, ["train"], tiny_dataset_2d.parent, tmp_path, "--ckpt_dir", str(tmp_path / "ckpt"),
                "--roi_size", "[32, 32]")  # fmt: skip
    _check_two_iterations(tmp_path / "ckpt", "dense_unet", 1, (32, 32))
    run = _mlflow_run(tmp_path, "ct_lesion_denseunet2d")
    assert {"train_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion"} <= set(run.data.metrics)
    assert run.data.params["network"] == "dense_unet"
    assert {k for k in run.data.params if k.startswith("clahe")}, "CLAHE settings are logged as parameters"


@pytest.mark.slow
def test_attention_unet_3d_bundle_trains_two_iterations(tiny_dataset, tmp_path):
    bundle = BUNDLES / "ct_organ_attentionunet3d"
    _run_bundle(bundle, ["train"], tiny_dataset.parent, tmp_path, "--ckpt_dir", str(tmp_path / "ckpt"),
                "--roi_size", "[32, 32, 16]")  # fmt: skip
    _check_two_iterations(tmp_path / "ckpt", "attention_unet", 1, (32, 32, 16))
    run = _mlflow_run(tmp_path, "ct_organ_attentionunet3d")
    assert {"train_loss", "val_mean_dice", "val_dice_lesion"} <= set(run.data.metrics)
    assert run.data.params["network"] == "attention_unet"


@pytest.fixture(scope="module")
def fusion_runs(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """Stage 1 (fusion pretraining overlay) then stage 2 (train.yaml from stage 1's best model)."""
    bundle = BUNDLES / "ctmr_fusion_seg3d"
    workdir = tmp_path_factory.mktemp("fusion_runs")
    stage1, stage2 = workdir / "stage1", workdir / "stage2"
    roi = ("--roi_size", "[32, 32, 16]")
    _run_bundle(
        bundle, ["train", "fusion_pretrain"], tiny_dataset.parent, workdir, "--ckpt_dir", str(stage1), *roi
    )
    output = _run_bundle(bundle, ["train"], tiny_dataset.parent, workdir, "--ckpt_dir", str(stage2), *roi,
                         "--fusion_pretrain_checkpoint", str(stage1 / "model.pt"))  # fmt: skip
    return {"workdir": workdir, "stage1": stage1, "stage2": stage2, "stage2_log": output}


@pytest.mark.slow
def test_fusion_pretrain_trains_only_the_fusion_network(fusion_runs):
    final = load_checkpoint(fusion_runs["stage1"] / "model_final.pt")
    assert final["trainer"]["iteration"] == 2
    net = network_from_checkpoint(fusion_runs["stage1"] / "model.pt")
    n_fusion = len(list(net.fusion_net.parameters()))
    # AdamW keeps state only for parameters that received gradients: the frozen segmenter got none
    assert len(final["optimizer"]["state"]) == n_fusion < len(list(net.parameters()))
    run = _mlflow_run(fusion_runs["workdir"], "ctmr_fusion_seg3d-fusion_pretrain")
    assert 0.0 < run.data.metrics["val_fusion_ssim"] <= 1.0
    assert "val_mean_dice" not in run.data.metrics


@pytest.mark.slow
def test_fusion_joint_stage_starts_from_stage1(fusion_runs):
    assert f"loaded pretrained weights from {fusion_runs['stage1'] / 'model.pt'}" in fusion_runs["stage2_log"]
    _check_two_iterations(fusion_runs["stage2"], "fusion_seg_net", 2, (32, 32, 16))
    final = load_checkpoint(fusion_runs["stage2"] / "model_final.pt")
    net = network_from_checkpoint(fusion_runs["stage2"] / "model.pt")
    assert len(final["optimizer"]["state"]) == len(list(net.parameters()))  # everything trains jointly
    run = _mlflow_run(fusion_runs["workdir"], "ctmr_fusion_seg3d")
    assert {"train_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion"} <= set(run.data.metrics)


@pytest.mark.slow
def test_fusion_predictor_segments_ct_and_mr_onto_the_ct_grid(fusion_runs, tiny_dataset, tmp_path):
    case = json.loads(tiny_dataset.read_text())["test"][0]
    ct_path = tiny_dataset.parent / case["image"]
    mr = nib.load(tiny_dataset.parent / case["mr"])
    # the MR on its own, smaller grid (cropped 4 voxels in X and Y, shifted origin): resampled onto the CT
    shifted = mr.affine.copy()
    shifted[:3, 3] += mr.affine[:3, :3] @ np.array([4.0, 4.0, 0.0])
    mr_path = tmp_path / "mr_cropped.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(mr.dataobj)[4:-4, 4:-4], shifted), mr_path)

    options = InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    predictor = Predictor.from_bundle(BUNDLES / "ctmr_fusion_seg3d", fusion_runs["stage2"] / "model.pt",
                                      options=options)  # fmt: skip
    assert predictor.input_keys == ("image", "mr")
    data = predictor.load({"image": ct_path, "mr": mr_path})
    assert data.data["image"].shape == data.data["mr"].shape  # one key per modality, both on the resampled CT grid
    assert predictor.probabilities(data).shape[0] == 3
    seg = predictor.segment(data).labels
    ct = nib.load(ct_path)
    assert tuple(seg.shape) == (1, *ct.shape) and seg.dtype == torch.uint8
    np.testing.assert_allclose(np.asarray(seg.affine), ct.affine, atol=1e-4)
    assert set(torch.unique(seg).tolist()) <= {0, 1, 2}
    with pytest.raises(KeyError, match="mr"):
        predictor.load({"image": ct_path})
    # the same two scans in memory, each on its own grid (as a MONAI Deploy operator hands them over)
    in_memory = predictor.predict_image({"image": nib.load(ct_path), "mr": nib.load(mr_path)})
    assert isinstance(in_memory, nib.Nifti1Image)
    np.testing.assert_array_equal(in_memory.affine, ct.affine)
    np.testing.assert_array_equal(np.asarray(in_memory.dataobj), seg[0].numpy())


def test_fusion_ssim_metric_is_one_for_identical_sources_and_lower_otherwise():
    ct = torch.rand(2, 1, 24, 25, 11)
    metric = FusionSSIMMetric(spatial_dims=3, win_size=7)
    torch.testing.assert_close(metric(ct, torch.cat([ct, ct], dim=1)), torch.ones(2, 1))
    metric.reset()
    other = torch.rand(2, 1, 24, 25, 11)
    halfway = metric(ct, torch.cat([ct, other], dim=1))
    assert halfway.shape == (2, 1) and bool((halfway < 0.75).all()) and bool((halfway > 0.4).all())
    with pytest.raises(ValueError, match=r"fused image \(B, 1, \*spatial\)"):
        metric(torch.cat([ct, ct], dim=1), torch.cat([ct, ct], dim=1))


def test_pretrained_weights_loader_loads_only_when_asked(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"model": source.state_dict()}, tmp_path / "model.pt")
    before = target.weight.detach().clone()
    PretrainedWeightsLoader(None, target)(engine=None)
    PretrainedWeightsLoader(tmp_path / "model.pt", target, resume=True)(engine=None)
    torch.testing.assert_close(target.weight, before)
    PretrainedWeightsLoader(tmp_path / "model.pt", target)(engine=None)
    torch.testing.assert_close(target.weight, source.weight)
    with pytest.raises(CheckpointError, match="missing.pt is not a file"):
        PretrainedWeightsLoader(tmp_path / "missing.pt", target)
    with pytest.raises(CheckpointError, match="does not fit the network"):
        PretrainedWeightsLoader(tmp_path / "model.pt", torch.nn.Linear(4, 2))(engine=None)
