"""Each segmentation network overfits one small synthetic case (a noisy 2D ellipse) to Dice > 0.9 on CPU."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from networks import build_network, list_networks

# Tiny, fast configurations; a registered network missing here fails the suite.
LEARN: dict[str, dict] = {
    "attention_unet": {"channels": (8, 16, 32)},
    "dense_unet": {"init_features": 8, "growth_rate": 8, "layers_per_block": 2, "dropout": 0.0,
                   "norm": ("instance", {"affine": True})},
    "res_unet": {"channels": (8, 16, 32)},
    "unet": {"features": (8, 16, 32), "norm": ("instance", {"affine": True})},
}
STEPS = 60


def ellipse_case(size: int = 48, in_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``(1, in_channels, size, size)`` (bright ellipse + Gaussian noise) and label ``(1, 1, size, size)``."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((xx - 26.0) / 13.0) ** 2 + ((yy - 21.0) / 9.0) ** 2 <= 1.0
    label = inside.float()[None, None]
    image = label.repeat(1, in_channels, 1, 1) + 0.35 * torch.randn(1, in_channels, size, size, generator=g)
    return image, label


def test_every_network_has_a_learning_config():
    assert sorted(LEARN) == list_networks()


@pytest.mark.slow
@pytest.mark.parametrize("name", list_networks())
def test_network_overfits_one_case(name):
    image, label = ellipse_case()
    net = build_network(name, spatial_dims=2, in_channels=1, out_channels=2, **LEARN[name])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = loss_fn(net(image), label)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = net(image).argmax(1, keepdim=True)
    dice = DiceMetric(include_background=False)(torch.cat([pred == 0, pred == 1], 1), torch.cat([label == 0, label == 1], 1))
    assert dice.item() > 0.9, f"{name}: Dice {dice.item():.3f} after {STEPS} steps"
