"""2D from 3D: the 2D bundle trains on slices sampled from volumes (neighbouring slices as channels) and
predicts a volume slice by slice onto its input grid, alike through MONAI's runner and ``clinseg predict``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.cli import main
from pipeline.core.bundle import Bundle
from pipeline.inference.slice_inferer import SliceWiseInferer
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES
from tests.test_bundles_train import _check_two_iterations, _mlflow_run, _run_bundle
from transforms.geometry.slices import NeighbourSlicesd

BUNDLE = BUNDLES / "ct_lesion_denseunet2d"
ROI = [32, 32]


@pytest.mark.parametrize("context", [0, 1, 2])
def test_neighbour_slices_are_ordered_and_aligned(context):
    depth, width = 5, 2 * context + 1
    ramp = torch.arange(depth, dtype=torch.float32).expand(2, 3, 4, depth) + 100 * torch.arange(2.0).view(2, 1, 1, 1)
    image = MetaTensor(ramp, affine=torch.diag(torch.tensor([0.5, 0.5, 2.0, 1.0], dtype=torch.float64)))
    out = NeighbourSlicesd("image", context=context)({"image": image})["image"]
    assert out.shape == (2 * width, 3, 4, depth)
    for c in range(2):
        for j in range(width):  # channel c * (2k + 1) + j at slice z is slice z + j - k, clamped at the ends
            expected = 100 * c + (torch.arange(depth) + j - context).clamp(0, depth - 1).float()
            torch.testing.assert_close(out[c * width + j].as_tensor(), expected.expand(3, 4, depth))
    torch.testing.assert_close(out[context::width].as_tensor(), ramp)  # the centre channels are the input
    torch.testing.assert_close(out.affine, image.affine)


@pytest.mark.parametrize("context", [-1, 1.5, True])
def test_neighbour_slices_reject_a_bad_context(context):
    with pytest.raises(ValueError, match="context must be an int >= 0"):
        NeighbourSlicesd("image", context=context)


def test_neighbour_slices_of_a_single_slice_name_the_file():
    image = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "slice_007.nii.gz"})
    with pytest.raises(ValueError, match=r"slice_007\.nii\.gz: neighbouring slices need a volume"):
        NeighbourSlicesd("image", context=1)({"image": image})


def test_slice_wise_inferer_runs_a_2d_network_per_slice_and_on_single_slices():
    net = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
    inferer = SliceWiseInferer(spatial_dim=2, roi_size=(16, 12), sw_batch_size=2, overlap=0.0, mode="constant")
    volume = torch.rand(1, 3, 16, 12, 5)
    with torch.no_grad():
        out = inferer(volume, net)
        assert out.shape == (1, 2, 16, 12, 5)
        for z in range(5):
            torch.testing.assert_close(out[..., z], net(volume[..., z]))
        single = volume[..., 2]
        torch.testing.assert_close(inferer(single, net), net(single))  # after a volume, a slice still works


def _checkpoint(path, **overrides):
    torch.manual_seed(0)
    net = Bundle.at(BUNDLE).parser("inference", **overrides).get_parsed_content("network_def")
    with torch.no_grad():  # random weights label everything background; a bias-free, sharper head varies with the image
        net.head[1].bias.zero_()
        net.head[1].weight.mul_(100.0)
    torch.save({"model": net.state_dict()}, path)
    return path


@pytest.mark.slow
def test_dense_unet_2d_bundle_trains_on_slices_sampled_from_volumes(tiny_dataset, tmp_path):
    _run_bundle(BUNDLE, ["train"], tiny_dataset.parent, tmp_path, "--ckpt_dir", str(tmp_path / "ckpt"),
                "--roi_size", json.dumps(ROI), "--slice_source", "volume", "--context_slices", "1")  # fmt: skip
    _check_two_iterations(tmp_path / "ckpt", "dense_unet", 3, tuple(ROI))  # 3 channels: a slice and 1 either side
    run = _mlflow_run(tmp_path, "ct_lesion_denseunet2d")
    assert {"train_loss", "val_mean_dice", "val_dice_organ", "val_dice_lesion"} <= set(run.data.metrics)


@pytest.fixture(scope="module")
def tiny_slices(tmp_path_factory):
    """Six tiny synthetic 2D CT slices (the bundle's single-slice mode); returns dataset.json."""
    from pipeline.synthetic.phantoms import synthesize

    out = tmp_path_factory.mktemp("tiny_slices")
    return synthesize(out, cases=6, seed=3, spatial_dims=2, shape=(64, 60), splits=(0.5, 0.2, 0.3))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "context", "dataset"),
    [("volume", 1, "tiny_dataset"), ("volume", 0, "tiny_dataset"), ("slice", 0, "tiny_slices")],
)
def test_monai_bundle_run_and_clinseg_predict_agree_slice_by_slice(source, context, dataset, request, tmp_path):
    """Volumes: one mask per volume on its input grid, every slice segmented; single slices as before."""
    tiny_dataset = request.getfixturevalue(dataset)
    checkpoint = _checkpoint(tmp_path / "model.pt", slice_source=source, context_slices=context)
    entries = json.loads(tiny_dataset.read_text())["test"]
    monai_bundle_run(
        BUNDLE, ["inference"], tmp_path,
        "--dataset_dir", str(tiny_dataset.parent),
        "--output_dir", str(tmp_path / "monai"),
        "--ckpt_path", str(checkpoint),
        "--roi_size", json.dumps(ROI),
        "--slice_source", source,
        "--context_slices", str(context),
        "--device", "$torch.device('cpu')",
    )  # fmt: skip
    code = main([
        "predict", str(BUNDLE), "--input", str(tiny_dataset), "--split", "test", "--output", str(tmp_path / "clinseg"),
        "--checkpoint", str(checkpoint), "--roi-size", *map(str, ROI), "--device", "cpu", "--no-amp",
        "--no-preview", "--no-dicom-seg", "--quiet", "--set", f"slice_source={source}", "--set", f"context_slices={context}",
    ])  # fmt: skip
    assert code == 0
    for entry in entries:
        scan = nib.load(tiny_dataset.parent / entry["image"])
        monai, ours = (nib.load(tmp_path / run / entry["case"] / "seg.nii.gz") for run in ("monai", "clinseg"))
        assert ours.shape == scan.shape[: 3 if source == "volume" else 2], entry["case"]  # the input grid
        np.testing.assert_allclose(ours.affine, scan.affine, atol=1e-5)
        assert np.unique(np.asarray(ours.dataobj)).size > 1, "a mask of one label proves little"
        np.testing.assert_array_equal(np.asarray(monai.dataobj), np.asarray(ours.dataobj), err_msg=entry["case"])
        np.testing.assert_array_equal(monai.affine, ours.affine)
