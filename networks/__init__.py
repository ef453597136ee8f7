"""clinseg networks: 2D/3D segmentation and fusion networks returning logits, built by name."""

from networks.factory import build_network, list_networks
from networks.nets import AttentionUNet, DenseUNet, DualEncoderFusion, FusionSegNet, ResUNet, UNet
from networks.registry import register_network

__all__ = [
    "AttentionUNet",
    "DenseUNet",
    "DualEncoderFusion",
    "FusionSegNet",
    "ResUNet",
    "UNet",
    "build_network",
    "list_networks",
    "register_network",
]
