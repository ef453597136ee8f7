"""Loss presets and fusion losses: value ranges, ~0 at a perfect prediction, gradients, argument checks."""

from __future__ import annotations

import pytest
import torch

from networks import build_network
from pipeline.training.losses import (
    DeepSupervisionStackLoss,
    FusionLoss,
    JointFusionSegLoss,
    dice_ce_loss,
    dice_focal_loss,
    gradient_magnitude,
)

SHAPES = {2: (33, 34), 3: (17, 18, 19)}


def labels(spatial_dims: int, classes: int = 3) -> torch.Tensor:
    return torch.randint(0, classes, (2, 1, *SHAPES[spatial_dims]))


def perfect_logits(label: torch.Tensor, classes: int) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(label[:, 0].long(), classes).movedim(-1, 1).float()
    return (onehot * 2 - 1) * 40.0


@pytest.mark.parametrize("factory", [dice_ce_loss, dice_focal_loss])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_multiclass_presets(factory, spatial_dims):
    loss = factory("multiclass")
    label = labels(spatial_dims)
    assert loss(perfect_logits(label, 3), label).item() < 1e-3
    logits = torch.randn(2, 3, *SHAPES[spatial_dims], requires_grad=True)
    value = loss(logits, label)
    assert 0 < value.item() < 10
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("factory", [dice_ce_loss, dice_focal_loss])
def test_binary_presets_use_sigmoid(factory):
    loss = factory("binary")
    label = (torch.rand(2, 1, 33, 34) > 0.5).float()
    assert loss((label * 2 - 1) * 40.0, label).item() < 1e-3
    assert loss((1 - 2 * label) * 40.0, label).item() > 1.0
    assert loss.dice.sigmoid and not loss.dice.softmax


def test_preset_weights_are_applied():
    label = labels(2)
    logits = torch.randn(2, 3, *SHAPES[2])
    dice_only = dice_ce_loss(lambda_ce=0.0)(logits, label)
    ce_only = dice_ce_loss(lambda_dice=0.0)(logits, label)
    torch.testing.assert_close(
        dice_ce_loss(lambda_dice=0.5, lambda_ce=2.0)(logits, label), 0.5 * dice_only + 2 * ce_only
    )
    focal_only = dice_focal_loss(lambda_dice=0.0, lambda_focal=1.0)(logits, label)
    torch.testing.assert_close(dice_focal_loss(lambda_focal=3.0)(logits, label), dice_only + 3 * focal_only)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dice_ce_loss("multi"), "dice_ce_loss: mode must be one of .*got 'multi'"),
        (
            lambda: dice_focal_loss(lambda_focal=-1),
            "dice_focal_loss: lambda_focal must be a number >= 0, got -1",
        ),
        (lambda: FusionLoss(ssim_weight=-0.1), "FusionLoss: ssim_weight must be a number >= 0, got -0.1"),
        (lambda: FusionLoss(win_size=6), "FusionLoss: win_size must be an odd positive integer, got 6"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_deep_supervision_stack_loss():
    loss = DeepSupervisionStackLoss(dice_ce_loss())
    label = labels(2)
    perfect = perfect_logits(label, 3)
    stacked = torch.stack([perfect, perfect, torch.zeros_like(perfect)], dim=1)  # (B, S, C, H, W)
    plain = dice_ce_loss()(torch.zeros_like(perfect), label)
    torch.testing.assert_close(
        loss(stacked, label), 0.25 * plain, atol=1e-3, rtol=1e-3
    )  # exp weights 1, .5, .25
    assert loss(perfect, label).item() < 1e-3  # eval-mode single tensor


def test_gradient_magnitude_of_a_ramp():
    ramp = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 1, 10, 7)
    mag = gradient_magnitude(ramp)
    assert mag.shape == ramp.shape
    torch.testing.assert_close(mag[..., :-1, :], torch.ones(1, 1, 9, 7))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fusion_loss_range_zero_and_gradients(spatial_dims):
    loss = FusionLoss()
    image = torch.rand(2, 1, *SHAPES[spatial_dims])
    assert loss(image, image.repeat(1, 2, *([1] * spatial_dims))).item() < 1e-4
    fused = torch.rand(2, 1, *SHAPES[spatial_dims], requires_grad=True)
    sources = torch.rand(2, 2, *SHAPES[spatial_dims])
    value = loss(fused, sources)
    assert 0.1 < value.item() < 2.0
    value.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


def test_fusion_loss_prefers_the_sharper_fusion():
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(34.0), indexing="ij")
    a = (xx > 16).float()[None, None]
    b = (yy > 16).float()[None, None]
    sources = torch.cat([a, b], dim=1)
    loss = FusionLoss()
    assert loss(torch.maximum(a, b), sources) < loss(torch.full_like(a, 0.5), sources)


def test_fusion_loss_shape_errors():
    with pytest.raises(ValueError, match=r"FusionLoss: sources must be \(B, N, \*spatial\) matching fused"):
        FusionLoss()(torch.rand(1, 1, 16, 16), torch.rand(1, 2, 16, 15))


def tiny_fusion_seg_net() -> torch.nn.Module:
    return build_network(
        "fusion_seg_net",
        spatial_dims=2,
        in_channels=2,
        out_channels=3,
        fusion_features=(4, 8),
        segmenter_kwargs={"channels": (4, 8)},
    )


def test_joint_loss_reads_the_network_and_follows_the_stage():
    net = tiny_fusion_seg_net()
    seg = dice_focal_loss()
    loss = JointFusionSegLoss(seg, fusion_weight=0.5, network=net)
    assert list(loss.parameters()) == []  # the network is referenced, not owned
    with pytest.raises(ValueError, match="has not run a forward pass yet"):
        loss(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    x, label = torch.rand(2, 2, 32, 33), labels(2)[..., :32, :33]
    logits = net(x)
    value = loss(logits, label)
    expected = seg(logits, label) + 0.5 * FusionLoss()(net.last_fused, x)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(p.grad is not None for p in net.parameters())
    torch.testing.assert_close(loss(logits, label, fused=net.last_fused, sources=x), expected)
    net.set_stage("fusion_pretrain")
    torch.testing.assert_close(loss(net(x), label), FusionLoss()(net.last_fused, x))


def test_joint_loss_takes_the_forward_with_fused_pair():
    net = tiny_fusion_seg_net()
    loss = JointFusionSegLoss(dice_ce_loss(), fusion_weight=1.0)
    x, label = torch.rand(1, 2, 32, 32), labels(2)[:1, :, :32, :32]
    logits, fused = net.forward_with_fused(x)
    value = loss((logits, fused), label, sources=x)
    torch.testing.assert_close(value, dice_ce_loss()(logits, label) + FusionLoss()(fused, x))
    with pytest.raises(ValueError, match="pass fused= and sources=, or build the loss with network="):
        loss(logits, label)


def test_losses_and_networks_build_from_bundle_config():
    from monai.bundle import ConfigParser

    config = {
        "network": {
            "_target_": "networks.nets.fusion.FusionSegNet",
            "spatial_dims": 2,
            "in_channels": 2,
            "out_channels": 2,
            "fusion_features": [4, 8],
            "segmenter": "res_unet",
            "segmenter_kwargs": {"channels": [4, 8, 16], "deep_supervision": False},
        },
        "seg_loss": {"_target_": "pipeline.training.losses.dice_focal_loss", "mode": "multiclass", "lambda_focal": 0.5},
        "loss": {
            "_target_": "pipeline.training.losses.JointFusionSegLoss",
            "seg_loss": "@seg_loss",
            "fusion_loss": {"_target_": "pipeline.training.losses.FusionLoss", "ssim_weight": 0.7, "gradient_weight": 0.3},
            "fusion_weight": 0.2,
            "network": "@network",
        },
    }
    parser = ConfigParser(config)
    net, loss = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    assert loss.network is net and loss.seg_loss.lambda_focal == 0.5
    x = torch.rand(1, 2, 32, 32)
    assert torch.isfinite(loss(net(x), torch.zeros(1, 1, 32, 32))).all()
