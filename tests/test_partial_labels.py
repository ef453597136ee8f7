"""Missing structures are ignored, not background: the mark on the label map, the marginal losses, the
training chain of a bundle, validation Dice and ``clinseg evaluate``'s metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.losses import DiceCELoss, DiceFocalLoss
from monai.metrics import DiceMetric

import json
import shutil

from pipeline.core.checkpoint import load_checkpoint
from pipeline.evaluation.evaluate import case_metrics
from pipeline.training.losses import DeepSupervisionStackLoss, dice_ce_loss, dice_focal_loss
from tests.bundle_runs import monai_bundle_run
from tests.conftest import BUNDLES
from transforms.labels.partial_labels import MarkMissingLabelsd, mark_missing, split_missing

torch.set_num_threads(1)
CLASSES = ["organ", "lesion"]


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (1, 3, 9, 10, 11), label (1, 1, ...), where the lesion truly is)``: the lesion was not
    contoured, so its voxels are 0 in the label."""
    logits = torch.randn(1, 3, 9, 10, 11, generator=torch.Generator().manual_seed(seed))
    label = torch.zeros(1, 1, 9, 10, 11)
    label[:, :, 1:5, 2:8, 2:9] = 1
    lesion = torch.zeros_like(label, dtype=torch.bool)
    lesion[:, :, 6:8, 3:7, 3:7] = True
    return logits, label, lesion


def test_mark_and_split_round_trip():
    label = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    marked = mark_missing(MetaTensor(label), [2, 3])
    assert isinstance(marked, MetaTensor) and marked.min() == -(2 + 4)
    back, missing = split_missing(torch.stack([marked.as_tensor(), label]), 4)
    torch.testing.assert_close(back, torch.stack([label, label]))
    assert missing.tolist() == [[False, False, True, True], [False, False, False, False]]
    assert mark_missing(label, []) is label
    with pytest.raises(ValueError, match="integer label map"):
        mark_missing(torch.zeros(2, 3, 3), [1])


@pytest.mark.parametrize("factory, base", [(dice_ce_loss, DiceCELoss), (dice_focal_loss, DiceFocalLoss)])
@pytest.mark.parametrize("include_background", [False, True])
def test_marginal_loss_equals_the_base_when_nothing_is_missing(factory, base, include_background):
    logits, label, _ = _case()
    loss = factory(include_background=include_background)
    assert isinstance(loss, base)
    torch.testing.assert_close(loss.marginal(logits, label), loss(logits, label), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory", [dice_ce_loss, dice_focal_loss])
def test_a_missing_class_is_not_taught_as_background(factory):
    """On the unlabelled voxels of a case lacking 'lesion', the marked loss depends on background and lesion only
    through their sum: its gradients on their logits are in proportion to their probabilities (no preference for
    background), while the plain loss pushes the lesion logit down there."""
    logits, label, lesion = _case()
    marked = mark_missing(label, [2])
    loss = factory(include_background=False)
    grads = {}
    for name, target in (("plain", label), ("marked", marked)):
        x = logits.clone().requires_grad_(True)
        loss(x, target).backward()
        grads[name] = x.grad[0]
    inside = lesion[0, 0]
    probs = torch.softmax(logits, dim=1)[0]
    assert grads["plain"][2][inside].sum() > 0  # gradient descent lowers the lesion logit: taught as background
    marginal = grads["marked"]
    torch.testing.assert_close(marginal[2][inside] / probs[2][inside], marginal[0][inside] / probs[0][inside])
    assert marginal[1][label[0, 0] > 0].abs().sum() > 0  # the organ is still learnt
    if factory is dice_ce_loss:  # predicting the lesion where it is costs nothing more than background
        swapped = logits.clone()
        swapped[0, 0][inside], swapped[0, 2][inside] = logits[0, 2][inside], logits[0, 0][inside]
        torch.testing.assert_close(loss(swapped, marked), loss(logits, marked))


def test_binary_mode_refuses_marked_labels():
    logits, label, _ = _case()
    with pytest.raises(ValueError, match="multiclass"):
        dice_ce_loss("binary")(logits[:, :1], mark_missing(label, [1]))


def test_deep_supervision_keeps_the_mark():
    logits, label, lesion = _case()
    stack = torch.stack([logits, logits], dim=1).requires_grad_(True)  # (B, S, C, *spatial)
    loss = DeepSupervisionStackLoss(dice_ce_loss(include_background=False))
    loss(stack, mark_missing(label, [2])).backward()
    full, probs, inside = stack.grad[0, 0], torch.softmax(logits, dim=1)[0], lesion[0, 0]
    torch.testing.assert_close(full[2][inside] / probs[2][inside], full[0][inside] / probs[0][inside])


def test_training_chain_batches_entries_with_and_without_missing_labels():
    """The bundles' mark_missing step pops missing_labels so a batch mixes both kinds of entries."""
    label = np.zeros((1, 6, 6, 4), np.float32)
    label[:, 1:3, 1:3, :] = 1
    entries = [
        {"case": "a", "label": label.copy(), "missing_labels": ["lesion"]},
        {"case": "b", "label": label.copy()},
    ]
    mark = MarkMissingLabelsd("label", CLASSES)
    batch = next(iter(DataLoader(CacheDataset(entries, mark, progress=False), batch_size=2)))
    assert "missing_labels" not in batch
    labels, missing = split_missing(batch["label"], 3)
    assert missing.tolist() == [[False, False, True], [False, False, False]]
    torch.testing.assert_close(labels, torch.as_tensor(np.stack([label, label])))
    with pytest.raises(ValueError, match="not among class_names"):
        mark({"label": label, "missing_labels": ["GTV-2"]})


def test_validation_dice_does_not_score_a_missing_class():
    """Validation's MeanDice (MONAI ignore_empty) gives nan, left out of the means, for a class the case's
    reference lacks, however much of it the network predicts."""
    label = torch.zeros(1, 1, 8, 8)
    label[..., 1:4, 1:4] = 1
    pred = label.clone()
    pred[..., 5:7, 5:7] = 2  # the (uncontoured) lesion, found
    onehot = lambda t: torch.nn.functional.one_hot(t.long()[:, 0], 3).movedim(-1, 1).float()  # noqa: E731
    dice = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(label))
    assert dice[0, 0] == 1 and math.isnan(dice[0, 1])


def test_evaluate_leaves_missing_labels_unscored():
    label = torch.zeros(1, 8, 8, 4)
    label[:, 1:4, 1:4] = 1
    pred = label.clone()
    pred[:, 5:7, 5:7] = 2
    names = {1: "organ", 2: "lesion"}
    rows = {r["name"]: r for r in case_metrics(pred, label, [1.0, 1.0, 2.0], names, missing=["lesion"])}
    assert rows["organ"]["dice"] == 1.0
    assert all(math.isnan(rows["lesion"][k]) for k in ("dice", "iou", "hd95_mm", "msd_mm", "surface_dice"))
    assert rows["lesion"]["pred_voxels"] == 16
    scored = {r["name"]: r for r in case_metrics(pred, label, [1.0, 1.0, 2.0], names)}
    assert scored["lesion"]["dice"] == 0.0  # without the entry's missing_labels: a false positive
    region = case_metrics(pred, label, [1.0, 1.0, 2.0], names, regions={"all": [1, 2]}, missing=["lesion"])
    assert math.isnan(region[0]["dice"])
    with pytest.raises(ValueError, match="not among label_names"):
        case_metrics(pred, label, [1.0, 1.0, 2.0], names, missing=["GTV-2"])


@pytest.mark.slow
def test_a_bundle_trains_and_validates_on_entries_with_missing_labels(tiny_dataset, tmp_path):
    """The shipped bundle's chain batches a case lacking 'lesion' with complete ones, trains and validates."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, data, symlinks=True)
    datalist = json.loads((data / tiny_dataset.name).read_text())
    for split in ("training", "validation"):
        datalist[split][0]["missing_labels"] = ["lesion"]
    (data / tiny_dataset.name).write_text(json.dumps(datalist))
    ckpt = tmp_path / "ckpt"
    monai_bundle_run(
        BUNDLES / "ct_organ_resunet3d", ["train"], tmp_path,
        "--dataset_dir", str(data), "--ckpt_dir", str(ckpt), "--tracking_uri", f"sqlite:///{tmp_path / 'm.db'}",
        "--max_epochs", "1", "--val_interval", "1", "--batch_size", "2", "--samples_per_volume", "1",
        "--roi_size", "[32, 32, 16]", "--log_run_artifacts", "false",
    )  # fmt: skip
    assert load_checkpoint(ckpt / "model_final.pt")["trainer"]["iteration"] == 2
