"""Each network overfits one small synthetic case (a noisy 2D ellipse) on CPU in a bounded number of steps."""

from __future__ import annotations

import pytest
import torch

from networks import build_network, list_networks
from pipeline.training.losses import FusionLoss, JointFusionSegLoss, dice_ce_loss

SIZE = 48
MAX_STEPS = 80
CHECK_EVERY = 10
INSTANCE = ("instance", {"affine": True})
# Tiny, fast configurations; a registered network missing here fails the suite.
LEARN: dict[str, dict] = {
    "attention_unet": {"channels": (8, 16, 32)},
    "dense_unet": {
        "init_features": 8,
        "growth_rate": 8,
        "layers_per_block": 2,
        "dropout": 0.0,
        "norm": INSTANCE,
    },
    "dual_encoder_fusion": {"features": (8, 16)},
    "feature_fusion_unet": {"features": (8, 16, 32), "norm": INSTANCE, "fused_image_head": True},
    "fusion_seg_net": {
        "fusion_features": (8, 16),
        "segmenter": "unet",
        "segmenter_kwargs": {"features": (8, 16, 32), "norm": INSTANCE},
    },
    "res_unet": {"channels": (8, 16, 32)},
    "unet": {"features": (8, 16, 32), "norm": INSTANCE},
}
SEGMENTERS = [name for name in list_networks() if name != "dual_encoder_fusion"]
FUSING = ("feature_fusion_unet", "fusion_seg_net")  # two modalities, trained with the auxiliary fusion loss


def ellipse_case(in_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``(1, in_channels, 48, 48)`` (ellipse + Gaussian noise, ~[0, 1]) and label ``(1, 1, 48, 48)``.

    With two channels the second one shows the ellipse at half contrast (a second modality).
    """
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    label = (((xx - 26.0) / 13.0) ** 2 + ((yy - 21.0) / 9.0) ** 2 <= 1.0).float()[None, None]
    contrast = torch.tensor([0.6, 0.3][:in_channels]).view(1, -1, 1, 1)
    noise = 0.08 * torch.randn(1, in_channels, SIZE, SIZE, generator=g)
    return (0.2 + contrast * label + noise).clamp(0, 1), label


def foreground_dice(logits: torch.Tensor, label: torch.Tensor) -> float:
    pred = logits.argmax(1, keepdim=True) == 1
    truth = label == 1
    return (2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1)).item()


def test_every_network_has_a_learning_config():
    assert sorted(LEARN) == list_networks()


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTERS)
def test_network_overfits_one_case(name):
    in_channels = 2 if name in FUSING else 1
    image, label = ellipse_case(in_channels)
    net = build_network(name, spatial_dims=2, in_channels=in_channels, out_channels=2, **LEARN[name])
    loss_fn = dice_ce_loss()
    if name in FUSING:
        loss_fn = JointFusionSegLoss(loss_fn, fusion_weight=0.1, network=net)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    dice = 0.0
    for step in range(1, MAX_STEPS + 1):
        net.train()
        optimizer.zero_grad()
        loss_fn(net(image), label).backward()
        optimizer.step()
        if step % CHECK_EVERY == 0:
            with torch.no_grad():
                dice = foreground_dice(net.eval()(image), label)
            if dice > 0.9:
                break
    assert dice > 0.9, f"{name}: Dice {dice:.3f} after {MAX_STEPS} steps"


@pytest.mark.slow
def test_fusion_network_learns_to_fuse():
    sources, _ = ellipse_case(2)
    net = build_network(
        "dual_encoder_fusion", spatial_dims=2, in_channels=2, out_channels=1, **LEARN["dual_encoder_fusion"]
    )
    loss_fn = FusionLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        start = loss_fn(net(sources), sources).item()
    for _ in range(MAX_STEPS // 2):
        optimizer.zero_grad()
        loss = loss_fn(net(sources), sources)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * start, f"fusion loss {start:.3f} -> {loss.item():.3f}"
